"""A disk cache of frozen-encoder outputs, so stage-1 training never runs the encoder twice.

Layout of a cache folder::

    index.json        {"fingerprint": ..., "dim": D, "dtype": "float16",
                       "shards": ["shard_00000.npy", ...], "entries": {id: [shard, offset, length]}}
    shard_00000.npy   (rows, D) float16; entry `id` is rows offset .. offset+length

The fingerprint identifies the encoder (a hash of its config and weights, `encoder.fingerprint()`).
Opening a cache with another fingerprint raises `StaleCacheError`: features of another encoder are
never used by accident. Shards are read as memory maps, so a cache larger than RAM is fine.
Writing is append-only and resumable: each `flush()` writes one new shard, then the index
(atomically), so a killed job loses at most the unflushed features.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechllm.atomic import atomic_write
from speechllm.data.audio import SAMPLE_RATE, load_audio
from speechllm.data.manifest import Sample

log = logging.getLogger(__name__)


class StaleCacheError(RuntimeError):
    """The cache on disk was written by a different encoder (its fingerprint differs)."""


def feature_key(sample_id: str, audio_index: int = 0) -> str:
    """Cache key of audio `audio_index` of a sample: "<id>" for the first, "<id>#<i>" for the others."""
    return sample_id if audio_index == 0 else f"{sample_id}#{audio_index}"


class FeatureCache:
    """Features (T, D) float16 keyed by id, in sharded memory-mapped .npy files under `root`."""

    def __init__(self, root: str | os.PathLike[str], fingerprint: str, *, shard_mb: float = 256.0) -> None:
        if not fingerprint:
            raise ValueError("fingerprint must be a non-empty string")
        self.root = Path(root)
        self.fingerprint = fingerprint
        self._shard_bytes = int(shard_mb * 2**20)
        self.root.mkdir(parents=True, exist_ok=True)
        self._index_path = self.root / "index.json"
        if self._index_path.exists():
            index = json.loads(self._index_path.read_text())
            if index["fingerprint"] != fingerprint:
                raise StaleCacheError(
                    f"{self.root} holds features of encoder {index['fingerprint']!r}, not {fingerprint!r}; "
                    "delete it or choose another folder"
                )
            self.dim: int | None = index["dim"]
            self._shards: list[str] = index["shards"]
            self._entries: dict[str, tuple[int, int, int]] = {k: tuple(v) for k, v in index["entries"].items()}
        else:
            self.dim, self._shards, self._entries = None, [], {}
            self._write_index()
        self._pending: dict[str, np.ndarray] = {}
        self._pending_bytes = 0
        self._maps: dict[int, np.ndarray] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._entries or key in self._pending

    def __len__(self) -> int:
        return len(self._entries) + len(self._pending)

    def keys(self) -> list[str]:
        return [*self._entries, *self._pending]

    def put(self, key: str, features: np.ndarray) -> None:
        """Store (T, D) features under `key`, converted to float16. Keys are written once."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"{key}: features must have shape (T>0, D), got {features.shape}")
        if self.dim is not None and features.shape[1] != self.dim:
            raise ValueError(f"{key}: feature dim {features.shape[1]} differs from the cache's {self.dim}")
        if key in self:
            raise ValueError(f"{key}: already in the cache (entries are written once)")
        if not np.isfinite(features).all():
            raise ValueError(f"{key}: features contain NaN or inf")
        self.dim = int(features.shape[1])
        half = features.astype(np.float16)
        self._pending[key] = half
        self._pending_bytes += half.nbytes
        if self._pending_bytes >= self._shard_bytes:
            self.flush()

    def get(self, key: str) -> np.ndarray:
        """(T, D) float16: a read-only memory-mapped view for flushed entries."""
        if key in self._pending:
            return self._pending[key]
        if key not in self._entries:
            raise KeyError(f"{key!r} is not in the feature cache at {self.root}")
        shard, offset, length = self._entries[key]
        if shard not in self._maps:
            self._maps[shard] = np.load(self.root / self._shards[shard], mmap_mode="r")
        return self._maps[shard][offset : offset + length]

    def flush(self) -> None:
        """Write pending features as one new shard, then the index. Cheap when nothing is pending."""
        if not self._pending:
            return
        shard = len(self._shards)
        name = f"shard_{shard:05d}.npy"
        rows = np.concatenate(list(self._pending.values()))  # sum(T_i), D
        with atomic_write(self.root / name, "wb") as f:
            np.save(f, rows)
        offset = 0
        for key, feats in self._pending.items():
            self._entries[key] = (shard, offset, len(feats))
            offset += len(feats)
        self._shards.append(name)
        self._pending, self._pending_bytes = {}, 0
        self._write_index()

    def _write_index(self) -> None:
        index = {
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "dtype": "float16",
            "shards": self._shards,
            "entries": self._entries,
        }
        with atomic_write(self._index_path) as f:
            f.write(json.dumps(index))

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


EncodeFn = Callable[[list[np.ndarray]], list[np.ndarray]]
"""Batch of (N_i,) 16 kHz audio -> list of (T_i, D) features; the frozen encoder, supplied by the caller."""


def encode_manifest(
    samples: Sequence[Sample],
    cache: FeatureCache,
    encode_fn: EncodeFn,
    batch_size: int = 8,
    *,
    flush_every: int = 64,
    progress: bool = True,
    max_seconds: float = 600.0,
) -> dict[str, float]:
    """Encode every audio file of `samples` not yet cached. Resumable: cached keys are skipped.

    Returns stats: encoded and skipped clip counts, audio seconds, encoder seconds and the real-time
    factor (encoder time / audio time; below 1 is faster than real time).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    todo = [
        (feature_key(s.id, i), path) for s in samples for i, path in enumerate(s.audio)
        if feature_key(s.id, i) not in cache
    ]  # fmt: skip
    total = sum(len(s.audio) for s in samples)
    stats = {"encoded": 0, "skipped": total - len(todo), "audio_seconds": 0.0, "encode_seconds": 0.0}
    bar = tqdm(total=total, initial=stats["skipped"], desc="encode", unit="clip", disable=not progress)
    with bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            audios = [load_audio(path, max_seconds=max_seconds) for _, path in batch]
            t0 = time.perf_counter()
            feats = encode_fn(audios)
            stats["encode_seconds"] += time.perf_counter() - t0
            if len(feats) != len(batch):
                raise ValueError(f"encode_fn returned {len(feats)} feature arrays for a batch of {len(batch)}")
            for (key, _), f in zip(batch, feats):
                cache.put(key, f)
            stats["encoded"] += len(batch)
            stats["audio_seconds"] += sum(len(a) for a in audios) / SAMPLE_RATE
            bar.update(len(batch))
            bar.set_postfix(rtf=f"{_rtf(stats):.4f}")
            if stats["encoded"] % flush_every < batch_size:
                cache.flush()
    cache.flush()
    stats["rtf"] = _rtf(stats)
    log.info(
        "encoded %d clips (%.0f s of audio) at real-time factor %.4f",
        stats["encoded"],
        stats["audio_seconds"],
        stats["rtf"],
    )
    return stats


def _rtf(stats: dict[str, float]) -> float:
    return stats["encode_seconds"] / stats["audio_seconds"] if stats["audio_seconds"] else 0.0
