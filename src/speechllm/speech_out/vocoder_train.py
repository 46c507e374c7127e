"""Training the unit vocoder, and voicing units with it (`speechllm vocoder train` / `synth`).

    speechllm vocoder train --units units.jsonl --out runs/vocoder [--steps N --batch-size B --lr LR --resume]
    speechllm vocoder synth --model runs/vocoder/model --units "12 7 93 4" --out out.wav
    speechllm vocoder synth --model runs/vocoder/model --units-file units.jsonl [--id ID] --out out.wav

From Python: `main(VocoderTrainConfig(units_manifest=...))` and `synth(VocoderSynthConfig(...))`
(speechllm.speech_out.train_config).

A units manifest is JSONL, one utterance a line: {"id": str, "audio": path to a 16 kHz mono WAV
(relative paths resolve against the manifest's folder), "units": [int, ...]}, the units being
FRAME-LEVEL ids at 50 Hz (one per HOP_SAMPLES samples, repeats kept), so the run lengths are the
durations the predictor learns. The audio is cropped or zero-padded to len(units) * HOP_SAMPLES.

Losses: multi-resolution STFT (spectral convergence + log-magnitude L1), log-mel L1, and the
duration predictor's L1 on log run lengths. No adversarial loss: a GAN's discriminators cost more
than the generator on a CPU and need far longer runs to pay off; the price is some buzz and
smoothed high frequencies that only a discriminator removes.

Segments: each item is a random window of `segment_frames` frames where the loss is computed,
preceded by up to `context_frames` frames (by default the generator's receptive field) that run
through the causal generator but are masked out of the loss. A window near the start of an
utterance simply has fewer context frames, which is what inference sees there (zero padding).
The run directory gets the loop's metrics.jsonl, curves.png and checkpoints/, and at the end
`model/`, which `UnitVocoder.load` reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.config import SAMPLE_RATE, save_config
from speechllm.data.audio import load_audio, save_wav
from speechllm.model.ctc import run_lengths
from speechllm.speech_out.config import HOP_SAMPLES
from speechllm.speech_out.train_config import VocoderSynthConfig, VocoderTrainConfig
from speechllm.speech_out.unit_data import UnitsItem, duration_batch, duration_l1, read_units_manifest
from speechllm.speech_out.vocoder import UnitVocoder
from speechllm.training.distributed import unwrap
from speechllm.training.loop import Batches, ResumableSampler, fit

log = logging.getLogger(__name__)

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))
"""(n_fft, hop) of the multi-resolution STFT loss: 32 ms to 128 ms windows, time and pitch detail."""
MEL_N_FFT, MEL_HOP, N_MELS = 1024, 256, 80
MAG_FLOOR = 1e-5
"""Magnitudes below this are clamped before the log: silence must not dominate the log terms."""


# --- data -----------------------------------------------------------------------------------------


class UnitsDataset:
    """Random fixed-length crops of (frame-level units, audio), plus each utterance's whole
    deduplicated units and durations for the duration predictor.

    Crops draw from NumPy's global RNG, which the training loop seeds and restores on resume.
    """

    def __init__(
        self, items: list[UnitsItem], segment_frames: int, context_frames: int, max_duration: int, lookahead: int = 0
    ) -> None:
        self.items, self.segment, self.context, self.max_duration = items, segment_frames, context_frames, max_duration
        self.lookahead = lookahead
        """Frames kept after the segment (when the utterance has them) for a vocoder that looks ahead."""

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame-level units (T,) and audio (T * HOP_SAMPLES,), the audio cropped or zero-padded to match."""
        item = self.items[index]
        units = np.asarray(item.units, dtype=np.int64)
        audio = load_audio(item.audio)[: len(units) * HOP_SAMPLES]
        return units, np.pad(audio, (0, len(units) * HOP_SAMPLES - len(audio)))

    def batch(self, indices: list[int]) -> dict[str, Tensor]:
        """A dict of tensors; L = context + segment + lookahead frames, U = the longest deduplicated sequence.

        frame_units (B, L), audio (B, L * hop), frame_mask (B, L): 1 on the frames the loss scores;
        units (B, U), log_durations (B, U), unit_mask (B, U).
        """
        length = self.context + self.segment + self.lookahead
        frame_units = np.zeros((len(indices), length), dtype=np.int64)
        audio = np.zeros((len(indices), length * HOP_SAMPLES), dtype=np.float32)
        frame_mask = np.zeros((len(indices), length), dtype=np.float32)
        dedup = []
        for row, index in enumerate(indices):
            units, wave = self.load(index)
            n = len(units)
            scored = int(np.random.randint(0, max(0, n - self.segment) + 1))  # first scored frame
            start = max(0, scored - self.context)
            # Frames after the segment are kept when they exist: the overlap-add of the last scored
            # frames reaches (n_fft - hop) / 2 samples into them, and a lookahead hears their units.
            # Past the utterance's end the last unit is repeated, as synthesis does.
            end = min(n, start + length)
            frame_units[row, : end - start] = units[start:end]
            frame_units[row, end - start :] = units[end - 1]
            audio[row, : (end - start) * HOP_SAMPLES] = wave[start * HOP_SAMPLES : end * HOP_SAMPLES]
            frame_mask[row, scored - start : min(n, scored + self.segment) - start] = 1.0
            dedup.append(run_lengths(units))
        arrays = {"frame_units": frame_units, "audio": audio, "frame_mask": frame_mask}
        return {k: torch.from_numpy(v) for k, v in arrays.items()} | duration_batch(dedup, self.max_duration)


# --- losses ---------------------------------------------------------------------------------------


def magnitude(audio: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Audio (B, S) -> STFT magnitude (B, n_fft // 2 + 1, frames), with a finite gradient at zero."""
    spec = torch.stft(audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    # |z| has a 0/0 gradient at z = 0, which masked (all-zero) frames hit exactly.
    return (spec.real.square() + spec.imag.square()).clamp(min=MAG_FLOOR**2).sqrt()


class VocoderLoss:
    """`loss_fn(model, batch)` for `fit`: weighted MR-STFT + log-mel L1 + duration L1, and each term."""

    def __init__(self, stft_weight: float = 1.0, mel_weight: float = 1.0, duration_weight: float = 1.0) -> None:
        from transformers.audio_utils import mel_filter_bank

        self.weights = {"stft": stft_weight, "mel": mel_weight, "duration": duration_weight}
        fb = mel_filter_bank(
            num_frequency_bins=MEL_N_FFT // 2 + 1,
            num_mel_filters=N_MELS,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        self.mel_fb = torch.from_numpy(fb.T.astype(np.float32))  # bins, mels -> mels, bins
        self.windows = {n: torch.hann_window(n) for n in {*(n for n, _ in STFT_RESOLUTIONS), MEL_N_FFT}}

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        audio_hat, log_durations = model(batch["frame_units"], batch["units"])
        # Zeroing both signals outside the scored frames leaves only scored audio in every term.
        mask = batch["frame_mask"].repeat_interleave(HOP_SAMPLES, dim=1)  # B, L -> B, L * hop
        pred, target = audio_hat.float() * mask, batch["audio"] * mask
        sc, log_mag = self.stft_terms(pred, target)
        mel = self.mel_term(pred, target)
        duration = duration_l1(log_durations, batch)
        w = self.weights
        loss = w["stft"] * (sc + log_mag) + w["mel"] * mel + w["duration"] * duration
        return {"loss": loss, "stft_sc": sc, "stft_mag": log_mag, "mel": mel, "duration": duration}

    def stft_terms(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Spectral convergence and log-magnitude L1, each averaged over STFT_RESOLUTIONS."""
        sc, log_mag = pred.new_zeros(()), pred.new_zeros(())
        for n_fft, hop in STFT_RESOLUTIONS:
            window = self.windows[n_fft].to(pred.device)
            p, t = magnitude(pred, n_fft, hop, window), magnitude(target, n_fft, hop, window)
            sc = sc + torch.linalg.vector_norm(t - p) / torch.linalg.vector_norm(t)
            log_mag = log_mag + F.l1_loss(p.log(), t.log())
        return sc / len(STFT_RESOLUTIONS), log_mag / len(STFT_RESOLUTIONS)

    def mel_term(self, pred: Tensor, target: Tensor) -> Tensor:
        window, fb = self.windows[MEL_N_FFT].to(pred.device), self.mel_fb.to(pred.device)

        def log_mel(x: Tensor) -> Tensor:  # B, S -> B, mels, frames
            return torch.matmul(fb, magnitude(x, MEL_N_FFT, MEL_HOP, window)).clamp(min=MAG_FLOOR).log()

        return F.l1_loss(log_mel(pred), log_mel(target))


# --- training -------------------------------------------------------------------------------------


def main(config: VocoderTrainConfig, *, resume: bool = False) -> dict[str, float]:
    """Train a vocoder on `config.units_manifest`; writes the run files and `<out_dir>/model`."""
    items = read_units_manifest(config.units_manifest, config.vocoder.num_units)
    model = UnitVocoder(config.vocoder)
    if config.init_from and not resume:  # a resumed run's checkpoint already holds the weights
        init_weights(model, UnitVocoder.load(config.init_from))
    context = model.generator.receptive_field - 1 if config.context_frames is None else config.context_frames
    data = UnitsDataset(items, config.segment_frames, context, config.vocoder.max_duration, config.vocoder.lookahead)
    out = Path(config.loop.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "train_config.yaml")
    sampler = ResumableSampler(len(data), config.batch_size, seed=config.loop.seed)
    loss = VocoderLoss(config.stft_weight, config.mel_weight, config.duration_weight)
    metrics = fit(model, loss, Batches(sampler, data.batch), config.loop, resume=resume)
    vocoder = unwrap(model)
    assert isinstance(vocoder, UnitVocoder)
    vocoder.cpu().save(out / "model")
    log.info("wrote %s", out / "model")
    return metrics


def init_weights(model: nn.Module, source: nn.Module) -> list[str]:
    """Copy every parameter of `source` whose name and shape match into `model`; returns (and logs)
    the names of `model`'s parameters that start fresh. Raises if nothing matches."""
    theirs = source.state_dict()
    ours = model.state_dict()
    loaded = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    if not loaded:
        raise ValueError("init_from: no parameter of that vocoder matches this one's names and shapes")
    model.load_state_dict(loaded, strict=False)
    fresh = sorted(set(ours) - set(loaded))
    log.info("init_from: %d tensors loaded, %d fresh: %s", len(loaded), len(fresh), ", ".join(fresh) or "none")
    return fresh


def synth(cfg: VocoderSynthConfig) -> tuple[Path, int, float]:
    """Voice `cfg.units` (or one utterance of `cfg.units_file`) into `cfg.out`; returns the WAV's
    path, the number of units voiced and the seconds of audio."""
    vocoder = UnitVocoder.load(cfg.model)
    if cfg.units is not None:
        units, mode = cfg.units, cfg.durations or "predict"
    else:
        assert cfg.units_file is not None  # VocoderSynthConfig wants exactly one
        items = read_units_manifest(cfg.units_file, vocoder.config.num_units)
        chosen = items[0] if cfg.id is None else next((i for i in items if i.id == cfg.id), None)
        if chosen is None:
            raise ValueError(f"id must name an utterance of {cfg.units_file}, got {cfg.id!r}")
        units, mode = chosen.units, cfg.durations or "given"
    ids, durations = run_lengths(units)
    audio = vocoder.synthesize(ids, durations if mode == "given" else None)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_wav(out, audio, SAMPLE_RATE)
    return out, len(ids), len(audio) / SAMPLE_RATE
