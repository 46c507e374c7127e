"""Feature cache: fp16 memory-mapped shards, stale-encoder detection, resume, encode_manifest."""

import numpy as np
import pytest

from speechllm.data.audio import save_wav
from speechllm.data.feature_cache import FeatureCache, StaleCacheError, encode_manifest, feature_key
from speechllm.data.manifest import Sample

D = 8
PROJECTION = np.random.default_rng(0).standard_normal((160, D)).astype(np.float32)


def fake_encode(audios):
    """A fixed random projection of 10 ms frames: (N,) -> (N // 160, D)."""
    return [a[: len(a) // 160 * 160].reshape(-1, 160) @ PROJECTION for a in audios]  # N -> T, 160 -> T, D


def test_put_get_flush_and_reopen(tmp_path):
    rng = np.random.default_rng(1)
    feats = {f"u{i}": rng.standard_normal((5 + i, D)).astype(np.float32) for i in range(6)}
    cache = FeatureCache(tmp_path, "enc-v1")
    for k, v in list(feats.items())[:3]:
        cache.put(k, v)
    np.testing.assert_array_equal(cache.get("u0"), feats["u0"].astype(np.float16))  # pending
    cache.flush()
    for k, v in list(feats.items())[3:]:
        cache.put(k, v)
    cache.flush()
    assert len(list(tmp_path.glob("shard_*.npy"))) == 2

    reopened = FeatureCache(tmp_path, "enc-v1")
    assert len(reopened) == 6 and "u5" in reopened and "u9" not in reopened
    for k, v in feats.items():
        got = reopened.get(k)
        assert got.dtype == np.float16 and got.shape == v.shape
        np.testing.assert_allclose(got, v, atol=2e-3, rtol=1e-3)
    assert isinstance(reopened.get("u4").base, np.memmap) or isinstance(reopened.get("u4"), np.memmap)
    with pytest.raises(KeyError, match="'u9'"):
        reopened.get("u9")


def test_other_fingerprint_is_stale(tmp_path):
    with FeatureCache(tmp_path, "enc-v1") as cache:
        cache.put("a", np.ones((2, D)))
    with pytest.raises(StaleCacheError, match="'enc-v1', not 'enc-v2'"):
        FeatureCache(tmp_path, "enc-v2")


def test_caller_mistakes(tmp_path):
    cache = FeatureCache(tmp_path, "enc")
    cache.put("a", np.ones((2, D)))
    with pytest.raises(ValueError, match="dim 3 differs from the cache's 8"):
        cache.put("b", np.ones((2, 3)))
    with pytest.raises(ValueError, match="already in the cache"):
        cache.put("a", np.ones((2, D)))
    with pytest.raises(ValueError, match=r"shape \(T>0, D\), got \(4,\)"):
        cache.put("c", np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        cache.put("d", np.full((2, D), np.nan))


def test_unflushed_writes_are_lost_cleanly_and_shards_fill_up(tmp_path):
    cache = FeatureCache(tmp_path, "enc", shard_mb=0.0001)  # ~100 bytes: every put starts a shard
    cache.put("a", np.ones((4, D)))
    cache.put("b", np.ones((4, D)))
    crashed = FeatureCache(tmp_path, "enc", shard_mb=256)
    crashed.put("c", np.ones((4, D)))  # never flushed: a killed job
    assert FeatureCache(tmp_path, "enc").keys() == ["a", "b"]


def make_samples(tmp_path, n):
    samples = []
    for i in range(n):
        wav = tmp_path / f"{i}.wav"
        save_wav(wav, np.random.default_rng(i).uniform(-0.5, 0.5, 1600 * (i + 1)).astype(np.float32))
        samples.append(
            Sample(f"s{i}", "asr", [str(wav)], [{"role": "user", "content": [{"type": "audio", "audio": 0}]}], "t")
        )
    return samples


def test_encode_manifest_resumes_and_reports_rtf(tmp_path):
    samples = make_samples(tmp_path, 5)
    cache = FeatureCache(tmp_path / "cache", "enc")
    stats = encode_manifest(samples[:3], cache, fake_encode, batch_size=2, progress=False)
    assert stats["encoded"] == 3 and stats["skipped"] == 0
    assert stats["audio_seconds"] == pytest.approx(0.1 + 0.2 + 0.3) and stats["rtf"] >= 0

    calls = []

    def counting_encode(audios):
        calls.append(len(audios))
        return fake_encode(audios)

    cache = FeatureCache(tmp_path / "cache", "enc")
    stats = encode_manifest(samples, cache, counting_encode, batch_size=4, progress=False)
    assert stats["encoded"] == 2 and stats["skipped"] == 3 and calls == [2]
    assert cache.get(feature_key("s4")).shape == (50, D)  # 0.5 s = 50 frames of 10 ms


def test_encode_fn_returning_the_wrong_count(tmp_path):
    samples = make_samples(tmp_path, 2)
    with pytest.raises(ValueError, match="returned 1 feature arrays for a batch of 2"):
        encode_manifest(samples, FeatureCache(tmp_path / "c", "enc"), lambda a: fake_encode(a)[:1], progress=False)
