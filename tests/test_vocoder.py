"""The unit vocoder: lengths, duration clamping, iSTFT parity with torch.istft, streaming equal to
offline with bounded state, the training data and losses, a 3-step run through `fit` and the CLI,
save/load, and the errors callers get. Tiny random models on the CPU, a few seconds in all."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from speechllm.config import SAMPLE_RATE
from speechllm.data.audio import load_audio, save_wav
from speechllm.speech_out.config import HOP_SAMPLES, VocoderConfig
from speechllm.speech_out.unit_data import UnitsItem, read_units_manifest
from speechllm.speech_out.vocoder import UnitVocoder
from speechllm.speech_out.vocoder_parts import OverlapAdd
from speechllm.speech_out.vocoder_train import UnitsDataset, VocoderLoss


@pytest.fixture(autouse=True)
def one_thread():
    """Streaming pushes are many tiny ops; on a shared CPU, intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**kw) -> VocoderConfig:
    return VocoderConfig(**{"num_units": 10, "dim": 32, "blocks": 2, "n_fft": 640, "max_duration": 6, **kw})


def tiny_vocoder(**kw) -> UnitVocoder:
    torch.manual_seed(0)
    return UnitVocoder(tiny_config(**kw)).eval()


def random_units(n: int, seed: int = 1, num_units: int = 10) -> list[int]:
    return torch.randint(0, num_units, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def cli(argv: list[str]) -> int:
    from speechllm.speech_out.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


# --- model ----------------------------------------------------------------------------------------


def test_output_length_dtype_and_rate() -> None:
    vocoder = tiny_vocoder()
    durations = [2, 1, 4, 3]
    audio = vocoder.synthesize([1, 5, 2, 9], torch.tensor(durations))
    assert audio.dtype == np.float32 and audio.shape == (sum(durations) * HOP_SAMPLES,)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert vocoder.sample_rate == SAMPLE_RATE == 16000
    batch = vocoder.frames_to_audio(torch.tensor([[1, 1, 5, 2, 2, 2, 9], [0, 3, 3, 3, 3, 4, 4]]))
    assert batch.shape == (2, 7 * HOP_SAMPLES)
    # Repeating a deduplicated unit by its duration is the same as giving the frame-level units.
    frame_level = vocoder.frames_to_audio(torch.tensor([[1, 1, 5, 2, 2, 2, 2, 9, 9, 9]]))[0]
    torch.testing.assert_close(torch.from_numpy(audio), frame_level, rtol=0, atol=1e-6)


def test_duration_predictor_clamps_to_range() -> None:
    vocoder = tiny_vocoder()
    units = random_units(12)
    with torch.no_grad():
        vocoder.duration_predictor.out.bias.fill_(20.0)  # exp(20) frames: far beyond max_duration
    assert vocoder.predict_durations(units).tolist() == [6] * 12
    assert len(vocoder.synthesize(units)) == 12 * 6 * HOP_SAMPLES
    with torch.no_grad():
        vocoder.duration_predictor.out.bias.fill_(-20.0)  # exp(-20) rounds to 0, clamped up to 1
    assert vocoder.predict_durations(units).tolist() == [1] * 12
    with torch.no_grad():
        vocoder.duration_predictor.out.bias.fill_(0.0)
    predicted = vocoder.predict_durations(units)
    assert predicted.dtype == torch.long and ((predicted >= 1) & (predicted <= 6)).all()
    assert len(vocoder.synthesize(units)) == int(predicted.sum()) * HOP_SAMPLES


@pytest.mark.parametrize("n_fft", [640, 1280])
def test_overlap_add_matches_torch_istft(n_fft: int) -> None:
    ola = OverlapAdd(n_fft, HOP_SAMPLES)
    spectrum = torch.randn(2, 9, n_fft // 2 + 1, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    ours = ola(spectrum)
    ref = torch.istft(
        spectrum.transpose(1, 2), n_fft, HOP_SAMPLES, window=torch.hann_window(n_fft), center=True
    )  # frame t centred on sample t * hop, (T - 1) * hop samples
    assert ours.shape == (2, 9 * HOP_SAMPLES)
    # Ours centres frame t on its own hop, half a hop later than torch's.
    half = HOP_SAMPLES // 2
    torch.testing.assert_close(ours[:, half : half + ref.shape[1]], ref, rtol=0, atol=1e-6)


def stream_audio(vocoder: UnitVocoder, units: list[int], chunk: int, durations: list[int] | None = None) -> np.ndarray:
    stream = vocoder.streaming()
    parts = [
        stream.push(units[i : i + chunk], None if durations is None else durations[i : i + chunk])
        for i in range(0, len(units), chunk)
    ]
    return np.concatenate([*parts, stream.flush()])


@pytest.mark.parametrize("n_fft", [640, 1280])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("lookahead", [0, 4])
@pytest.mark.parametrize("duration_lookahead", [0, 3])
def test_streaming_equals_offline(n_fft: int, chunk: int, lookahead: int, duration_lookahead: int) -> None:
    vocoder = tiny_vocoder(n_fft=n_fft, lookahead=lookahead, duration_lookahead=duration_lookahead)
    units = random_units(40)
    offline = vocoder.synthesize(units)
    np.testing.assert_allclose(stream_audio(vocoder, units, chunk), offline, rtol=0, atol=1e-5)
    durations = [1, 2, 1, 3] * 10  # given durations take the same path
    offline = vocoder.synthesize(units, durations)
    np.testing.assert_allclose(stream_audio(vocoder, units, chunk, durations), offline, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lookahead", [0, 3])
def test_audio_hears_exactly_lookahead_frames_of_future_units(lookahead: int) -> None:
    vocoder, n_fft = tiny_vocoder(lookahead=lookahead), 640
    units = random_units(30)
    changed = units.copy()
    p = 20
    changed[p] = (units[p] + 1) % 10
    durations = [1] * 30  # frame index = unit index
    a, b = vocoder.synthesize(units, durations), vocoder.synthesize(changed, durations)
    # Unit p first shapes audio frame p - lookahead, whose window starts (n_fft - hop) / 2 samples earlier.
    first = (p - lookahead) * HOP_SAMPLES - (n_fft - HOP_SAMPLES) // 2
    np.testing.assert_array_equal(a[:first], b[:first])
    assert np.abs(a[first : first + HOP_SAMPLES] - b[first : first + HOP_SAMPLES]).max() > 0


@pytest.mark.parametrize("lookahead", [0, 2])
def test_durations_hear_exactly_duration_lookahead_units_ahead(lookahead: int) -> None:
    predictor = tiny_vocoder(duration_lookahead=lookahead).duration_predictor
    units = torch.tensor([random_units(30)])
    changed = units.clone()
    p = 20
    changed[0, p] = (units[0, p] + 1) % 10
    with torch.no_grad():
        a, b = predictor.predict(units), predictor.predict(changed)
    assert a.shape == (1, 30)
    torch.testing.assert_close(a[:, : p - lookahead], b[:, : p - lookahead], rtol=0, atol=0)
    assert (a[0, p - lookahead] - b[0, p - lookahead]).abs() > 0


def test_streaming_shorter_than_the_lookahead_equals_offline() -> None:
    vocoder = tiny_vocoder(lookahead=6)
    np.testing.assert_allclose(stream_audio(vocoder, [3, 5], 1, [1, 2]), vocoder.synthesize([3, 5], [1, 2]), atol=1e-6)
    vocoder = tiny_vocoder(lookahead=2, duration_lookahead=5)
    np.testing.assert_allclose(stream_audio(vocoder, [3, 5, 1], 1), vocoder.synthesize([3, 5, 1]), atol=1e-6)
    for field in ("lookahead", "duration_lookahead"):
        with pytest.raises(ValueError, match=field):
            tiny_config(**{field: -1})


def test_a_stream_takes_durations_with_every_push_or_none() -> None:
    stream = tiny_vocoder().streaming()
    stream.push([1, 2], [2, 2])
    with pytest.raises(ValueError, match="every push of a stream or with none"):
        stream.push([3])


def test_streaming_one_short_unit_and_empty_pushes() -> None:
    vocoder = tiny_vocoder(n_fft=1280)  # the output lags the stream by 480 samples, more than one frame
    stream = vocoder.streaming()
    assert stream.push([]).size == 0
    first = stream.push([4], [1])
    assert first.size == 0  # nothing is final before the overlap-add delay has passed
    np.testing.assert_allclose(np.concatenate([first, stream.flush()]), vocoder.synthesize([4], [1]), atol=1e-6)
    with pytest.raises(ValueError, match="push after flush"):
        stream.push([1])
    assert vocoder.streaming().flush().size == 0


@pytest.mark.parametrize("ahead", [0, 2])
def test_streaming_state_stays_bounded(ahead: int) -> None:
    vocoder = tiny_vocoder(duration_lookahead=ahead)
    stream = vocoder.streaming()
    units = random_units(400, seed=3)
    # A prefix's durations are these, but for its last `ahead` units, which wait for their successors.
    predicted = vocoder.predict_durations(units).tolist()
    stream.push(units[:10])
    held = stream.state_numel()
    lagging = 0
    for i in range(10, 400, 5):
        out = stream.push(units[i : i + 5])
        assert stream.state_numel() == held
        lagging = stream.frames * HOP_SAMPLES - stream.emitted
        # Everything is out but the lookahead's frames and the overlap-add delay.
        assert lagging == vocoder.config.lookahead * HOP_SAMPLES + vocoder.ola.delay
        assert out.size == sum(predicted[i - ahead : i + 5 - ahead]) * HOP_SAMPLES
    assert stream.flush().size == lagging + sum(predicted[400 - ahead :]) * HOP_SAMPLES


# --- training -------------------------------------------------------------------------------------


def write_manifest(tmp_path: Path) -> Path:
    """Three utterances: audio a frame longer, as long as, and shorter than their units say."""
    rng = np.random.default_rng(0)
    lines = []
    for i, (frames, extra) in enumerate([(30, HOP_SAMPLES), (45, 0), (12, -500)]):
        units = np.repeat(rng.integers(0, 10, frames), 2)[:frames]  # runs of two frames
        t = np.arange(frames * HOP_SAMPLES + extra) / SAMPLE_RATE
        audio = 0.3 * np.sin(2 * np.pi * (200 + 20 * np.repeat(units, HOP_SAMPLES)[: len(t)].mean()) * t)
        save_wav(tmp_path / f"u{i}.wav", audio.astype(np.float32))
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "units": units.tolist()}))
    manifest = tmp_path / "units.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_batches_align_audio_with_units_and_mask_the_context(tmp_path: Path) -> None:
    frames = 50
    audio = np.repeat(np.arange(frames), HOP_SAMPLES).astype(np.float32) / 100  # sample value = its frame / 100
    save_wav(tmp_path / "a.wav", audio)
    items = [UnitsItem("a", tmp_path / "a.wav", list(range(frames))), UnitsItem("b", tmp_path / "a.wav", [7] * 5)]
    data = UnitsDataset(items, segment_frames=8, context_frames=6, max_duration=3)
    np.random.seed(0)
    for _ in range(5):
        batch = data.batch([0, 1])
        assert batch["frame_units"].shape == (2, 14) and batch["audio"].shape == (2, 14 * HOP_SAMPLES)
        row = batch["frame_units"][0].float()
        torch.testing.assert_close(batch["audio"][0, ::HOP_SAMPLES], row / 100, atol=1e-4, rtol=0)
        start = int(row[0])  # units are frame indices here
        scored = batch["frame_mask"][0].nonzero()[:, 0]
        # Six context frames precede the scored ones, unless the window starts the utterance.
        assert len(scored) == 8 and (start == 0 or int(scored[0]) == 6)
    assert batch["frame_mask"][1].tolist() == [1.0] * 5 + [0.0] * 9  # short utterance: padded, not scored
    assert batch["units"][1].tolist()[:1] == [7] and batch["unit_mask"][1].sum() == 1
    assert batch["log_durations"][1, 0].item() == pytest.approx(np.log(3))  # a 5-frame run capped at 3


def test_batches_keep_the_lookahead_frames_after_the_segment(tmp_path: Path) -> None:
    frames = 30
    save_wav(tmp_path / "a.wav", np.zeros(frames * HOP_SAMPLES, dtype=np.float32))
    items = [UnitsItem("a", tmp_path / "a.wav", list(range(frames)))]
    data = UnitsDataset(items, segment_frames=8, context_frames=2, max_duration=3, lookahead=3)
    np.random.seed(0)
    seen_end = seen_middle = False
    for _ in range(40):
        batch = data.batch([0])
        row, mask = batch["frame_units"][0].tolist(), batch["frame_mask"][0]
        assert len(row) == 13
        last_scored = int(mask.nonzero()[-1, 0])
        after = row[last_scored + 1 : last_scored + 4]
        if row[last_scored] + 3 < frames:  # the utterance goes on: its real next units are kept
            assert after == [row[last_scored] + i for i in (1, 2, 3)]
            seen_middle = True
        else:  # past the end the last unit is repeated, as synthesis does
            assert set(row[row.index(frames - 1) :]) == {frames - 1}
            seen_end = True
    assert seen_middle and seen_end


def test_losses_vanish_on_the_target_and_masked_gradients_are_finite() -> None:
    loss = VocoderLoss()
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    sc, log_mag = loss.stft_terms(x, x)
    assert sc.item() == log_mag.item() == loss.mel_term(x, x).item() == 0.0
    assert loss.mel_term(x, 0.5 * x).item() > 0.1
    vocoder = tiny_vocoder()
    vocoder.train()
    batch = {
        "frame_units": torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 0]] * 2),
        "audio": torch.randn(2, 10 * HOP_SAMPLES),
        "frame_mask": torch.tensor([[0.0] * 4 + [1.0] * 6, [0.0] * 7 + [1.0] * 3]),
        "units": torch.tensor([[1, 2, 3], [4, 4, 0]]),
        "log_durations": torch.tensor([[0.0, 0.7, 1.1], [0.0, 0.0, 0.0]]),
        "unit_mask": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
    }
    terms = loss(vocoder, batch)
    assert set(terms) == {"loss", "stft_sc", "stft_mag", "mel", "duration"}
    terms["loss"].backward()
    grads = [p.grad for p in vocoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_train_three_steps_then_synthesize_from_the_cli(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    recipe = {"vocoder": {"num_units": 10, "dim": 16, "blocks": 1, "n_fft": 640}, "loop": {"log_every": 1}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    argv = ["vocoder", "train", "--units", str(manifest), "--out", str(out), "--config", str(tmp_path / "tiny.yaml")]
    assert cli([*argv, "--steps", "3", "--batch-size", "2", "--segment-frames", "8", "--quiet"]) == 0
    assert (out / "checkpoints" / "step-0000003").is_dir()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    assert {"stft_sc", "stft_mag", "mel", "duration"} <= records[-1].keys()
    vocoder = UnitVocoder.load(out / "model")
    assert vocoder.config.dim == 16

    wav = tmp_path / "out.wav"
    assert cli(["vocoder", "synth", "--model", str(out / "model"), "--units-file", str(manifest), "--id", "u2",
                "--out", str(wav)]) == 0  # fmt: skip
    assert len(load_audio(wav)) == 12 * HOP_SAMPLES  # frame-level units keep their durations
    assert cli(["vocoder", "synth", "--model", str(out / "model"), "--units", "3 1,4", "--out", str(wav)]) == 0
    assert len(load_audio(wav)) == int(vocoder.predict_durations([3, 1, 4]).sum()) * HOP_SAMPLES


def test_train_durations_swaps_the_predictor_and_keeps_the_generator(tmp_path: Path, capsys) -> None:
    manifest = write_manifest(tmp_path)
    tiny_vocoder(max_duration=30).save(tmp_path / "voc")
    out = tmp_path / "dur"
    argv = ["vocoder", "train-durations", "--model", str(tmp_path / "voc"), "--units", str(manifest),
            "--dev-units", str(manifest), "--out", str(out), "--lookahead", "1", "--layers", "3", "--kernel", "2",
            "--steps", "40", "--batch-size", "3", "--lr", "1e-2", "--eval-every", "40", "--quiet"]  # fmt: skip
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{\n") :])
    before, after = UnitVocoder.load(tmp_path / "voc"), UnitVocoder.load(out / "model")
    assert (after.config.duration_lookahead, after.config.duration_layers, after.config.duration_kernel) == (1, 3, 2)
    for name, weight in before.generator.state_dict().items():
        assert torch.equal(weight, after.generator.state_dict()[name]), name
    # The manifest's runs are all two frames long (the last may be one): the new predictor learns that.
    from speechllm.speech_out.duration_train import duration_metrics, read_sequences

    dev = read_sequences(manifest, 10)
    assert (
        duration_metrics(after.duration_predictor, dev)["l1"] < duration_metrics(before.duration_predictor, dev)["l1"]
    )
    assert summary["dev_after"]["l1"] < summary["dev_before"]["l1"]
    assert summary["model"] == str(out / "model")


def test_the_vocoder_trainers_run_from_python_with_config_objects(tmp_path: Path) -> None:
    from speechllm.speech_out.duration_train import train_durations
    from speechllm.speech_out.train_config import DurationTrainConfig, VocoderSynthConfig, VocoderTrainConfig
    from speechllm.speech_out.vocoder_train import main, synth
    from speechllm.training.loop_config import LoopConfig

    manifest = write_manifest(tmp_path)
    run = tmp_path / "voc"
    loop = LoopConfig(out_dir=str(run), max_steps=2, warmup_steps=0, log_every=1, progress=False)
    config = VocoderTrainConfig(str(manifest), vocoder=tiny_config(blocks=1), loop=loop, batch_size=2, segment_frames=8)
    metrics = main(config)
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    assert UnitVocoder.load(run / "model").config == tiny_config(blocks=1)
    assert yaml.safe_load((run / "train_config.yaml").read_text())["units_manifest"] == str(manifest)

    durations = DurationTrainConfig(
        model=str(run / "model"), units=str(manifest), lookahead=1, kernel=2,
        loop=LoopConfig(out_dir=str(tmp_path / "dur"), max_steps=3, warmup_steps=0, progress=False),
    )  # fmt: skip
    summary = train_durations(durations)
    after = UnitVocoder.load(tmp_path / "dur" / "model")
    assert (after.config.duration_lookahead, after.config.duration_kernel) == (1, 2)
    assert summary["step"] == 3 and "dev_after" not in summary  # no dev_units, no held-out figures

    wav = str(tmp_path / "a.wav")
    out, units, seconds = synth(VocoderSynthConfig(model=str(run / "model"), out=wav, units=[3, 3, 5]))
    frames = int(UnitVocoder.load(run / "model").predict_durations([3, 5]).sum())  # repeats merge: predicted
    assert units == 2 and len(load_audio(out)) == frames * HOP_SAMPLES == round(seconds * SAMPLE_RATE)


def test_init_from_loads_matching_weights_and_names_the_fresh_ones(tmp_path: Path) -> None:
    from speechllm.speech_out.vocoder_train import init_weights

    source = tiny_vocoder()
    torch.manual_seed(5)
    target = UnitVocoder(tiny_config(duration_layers=3))
    fresh = init_weights(target, source)
    for name, weight in source.generator.state_dict().items():
        assert torch.equal(weight, target.generator.state_dict()[name]), name
    assert "duration_predictor.convs.2.conv.weight" in fresh and not any(f.startswith("generator") for f in fresh)
    with pytest.raises(ValueError, match="no parameter"):
        init_weights(torch.nn.Linear(2, 2), source)
    # Through the command line: a fine-tuning run starts from the given folder.
    manifest = write_manifest(tmp_path)
    source.save(tmp_path / "voc")
    argv = ["vocoder", "train", "--units", str(manifest), "--out", str(tmp_path / "ft"), "--init-from",
            str(tmp_path / "voc"), "--steps", "1", "--batch-size", "2", "--segment-frames", "8", "--quiet",
            "--duration-lookahead", "2"]  # fmt: skip
    assert cli(argv) == 0  # no --config: the architecture is the starting vocoder's, flags on top
    tuned = UnitVocoder.load(tmp_path / "ft" / "model")
    assert tuned.config == tiny_config(duration_lookahead=2)
    assert yaml.safe_load((tmp_path / "ft" / "train_config.yaml").read_text())["init_from"] == str(tmp_path / "voc")


def test_save_load_round_trip_gives_identical_audio(tmp_path: Path) -> None:
    vocoder = tiny_vocoder()
    units = random_units(20)
    vocoder.save(tmp_path / "voc")
    loaded = UnitVocoder.load(tmp_path / "voc")
    assert loaded.config == vocoder.config
    np.testing.assert_array_equal(loaded.synthesize(units), vocoder.synthesize(units))
    with pytest.raises(FileNotFoundError, match=r"no vocoder\.yaml"):
        UnitVocoder.load(tmp_path)


# --- errors ---------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_naming_the_value(tmp_path: Path) -> None:
    vocoder = tiny_vocoder()
    with pytest.raises(ValueError, match=r"units\[1\] must be a unit id in \[0, 10\), got 10"):
        vocoder.synthesize([3, 10])
    with pytest.raises(ValueError, match="got -1"):
        vocoder.streaming().push([-1])
    with pytest.raises(ValueError, match="got 0 units"):
        vocoder.synthesize([])
    with pytest.raises(ValueError, match=r"integer unit ids, got dtype torch\.float32"):
        vocoder.synthesize(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\), one per unit, got \(3,\)"):
        vocoder.synthesize([1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="durations must be >= 1 frame, got 0"):
        vocoder.synthesize([1, 2], [1, 0])
    with pytest.raises(ValueError, match="frame_units must be unit ids in \\[0, 10\\), got 12"):
        vocoder.frames_to_audio(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="n_fft must be a multiple of 320, got 1000"):
        tiny_config(n_fft=1000)
    with pytest.raises(ValueError, match="at least 640, got 320"):
        UnitVocoder(tiny_config(n_fft=320))
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(
        '{"id": "a", "audio": "a.wav", "units": [1, 2]}\n{"id": "b", "audio": "b.wav", "units": [1, 99]}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: units must lie in \[0, 10\), got 99"):
        read_units_manifest(manifest, num_units=10)
