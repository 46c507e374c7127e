"""The unit vocoder: deduplicated speech units -> 16 kHz waveform, offline or streaming.

Three steps, all causal (the generator with a fixed lookahead) so that a stream of units can be
voiced as it arrives (the parts: speechllm.speech_out.vocoder_parts):

1. `DurationPredictor`: unit embedding -> causal convolutions -> log duration (frames) of each unit;
   its output at unit i + duration_lookahead is unit i's duration, so it hears a few units ahead.
2. The units are repeated by their durations to the frame rate (50 Hz, one frame = HOP_SAMPLES).
3. `FrameGenerator`: causal ConvNeXt blocks at the frame rate -> log magnitude and phase of one STFT
   frame per unit frame (Vocos' iSTFT head, Siuzdak 2023), and `OverlapAdd`, our own inverse STFT.
   The generator's output at frame t + lookahead is audio frame t: each frame hears `lookahead`
   frames of the future (the next sound, where a run ends) for that many frames of latency; past
   the last frame the last unit is repeated.

`UnitVocoder.synthesize` voices a whole utterance; `UnitVocoder.streaming()` gives a `VocoderStream`
(speechllm.speech_out.vocoder_stream) that voices one as its units arrive, with the same audio.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speechllm.atomic import atomic_directory
from speechllm.config import SAMPLE_RATE, from_dict, to_dict
from speechllm.speech_out.config import HOP_SAMPLES, VocoderConfig
from speechllm.speech_out.vocoder_parts import DurationPredictor, FrameGenerator, OverlapAdd, UnitsLike, check_units
from speechllm.speech_out.vocoder_stream import VocoderStream

CONFIG_FILE = "vocoder.yaml"
WEIGHTS_FILE = "vocoder.safetensors"


class UnitVocoder(nn.Module):
    """Units -> 16 kHz audio: `DurationPredictor`, repeat by duration, `FrameGenerator`, `OverlapAdd`.

    The parts can be passed in (built from `config` when omitted); they must agree with `config`.
    """

    def __init__(
        self,
        config: VocoderConfig,
        duration_predictor: DurationPredictor | None = None,
        generator: FrameGenerator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.ola = OverlapAdd(config.n_fft, HOP_SAMPLES)
        self.duration_predictor = duration_predictor or DurationPredictor(
            config.num_units,
            config.dim,
            config.max_duration,
            config.duration_layers,
            config.duration_kernel,
            config.duration_lookahead,
        )
        self.generator = generator or FrameGenerator(
            config.num_units, config.dim, config.blocks, config.kernel, config.n_fft
        )
        for part, field in ((self.duration_predictor, "num_units"), (self.generator, "num_units")):
            if getattr(part, field) != config.num_units:
                raise ValueError(f"{type(part).__name__} has {field}={getattr(part, field)}, config {config.num_units}")
        if self.generator.n_fft != config.n_fft:
            raise ValueError(f"generator has n_fft={self.generator.n_fft}, config n_fft={config.n_fft}")
        predictor = self.duration_predictor
        for field, want in (
            ("max_duration", config.max_duration),
            ("layers", config.duration_layers),
            ("kernel", config.duration_kernel),
            ("lookahead", config.duration_lookahead),
        ):
            if getattr(predictor, field) != want:
                raise ValueError(f"duration predictor has {field}={getattr(predictor, field)}, config says {want}")

    def forward(self, frame_units: Tensor, units: Tensor) -> tuple[Tensor, Tensor]:
        """The training pass: frame-level units (B, T) -> audio (B, T * HOP_SAMPLES), and deduplicated
        units (B, N), each row padded with its last unit, -> their predicted log durations (B, N).
        Both in one call so DDP sees every weight."""
        log_durations = self.duration_predictor.predict(self._check_batch(units, "units"))
        return self.frames_to_audio(frame_units), log_durations

    def frames_to_audio(self, frame_units: Tensor) -> Tensor:
        """Frame-level units (B, T), durations implied by the repeats -> audio (B, T * HOP_SAMPLES)."""
        frame_units = self._check_batch(frame_units, "frame_units")
        future = frame_units[:, -1:].expand(-1, self.config.lookahead)  # B, 1 -> B, lookahead
        spectrum, _ = self.generator(torch.cat([frame_units, future], dim=1))  # B, T + lookahead, bins
        return self.ola(spectrum[:, self.config.lookahead :])  # B, T, bins -> B, T * hop

    @torch.inference_mode()
    def predict_durations(self, units: UnitsLike) -> Tensor:
        """Deduplicated units (N,) -> frames per unit (N,), each in [1, max_duration]."""
        ids = self._check_sequence(units).to(self.device)
        log_durations = self.duration_predictor.predict(ids[None])  # N -> 1, N
        return self.duration_predictor.durations(log_durations[0]).cpu()

    @torch.inference_mode()
    def synthesize(self, units: UnitsLike, durations: UnitsLike | None = None) -> np.ndarray:
        """Deduplicated units (N,) -> float32 audio at SAMPLE_RATE of sum(durations) * HOP_SAMPLES samples.

        `durations` (N,) in frames, each >= 1; predicted when None.
        """
        ids = self._check_sequence(units)
        frames = self.predict_durations(ids) if durations is None else self.check_durations(durations, len(ids))
        frame_units = torch.repeat_interleave(ids, frames).to(self.device)  # N -> sum(durations)
        return self.frames_to_audio(frame_units[None])[0].float().cpu().numpy()

    @property
    def num_units(self) -> int:
        return self.config.num_units

    def streaming(self) -> VocoderStream:
        """A stream for one utterance: push units as they come, get the audio that is final."""
        return VocoderStream(self)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def device(self) -> torch.device:
        """Where the vocoder's weights are (its inputs are moved there)."""
        return self.generator.head.weight.device

    def _check_sequence(self, units: UnitsLike) -> Tensor:
        ids = check_units(units, self.config.num_units)
        if ids.numel() == 0:
            raise ValueError("units must be a non-empty sequence of unit ids, got 0 units")
        return ids

    def check_durations(self, durations: UnitsLike, n: int) -> Tensor:
        """Given durations of `n` units -> (n,) long frames on the CPU; ValueError naming what is wrong."""
        frames = durations.detach().cpu() if isinstance(durations, Tensor) else torch.as_tensor(np.asarray(durations))
        if tuple(frames.shape) != (n,):
            raise ValueError(f"durations must have shape ({n},), one per unit, got {tuple(frames.shape)}")
        if frames.dtype.is_floating_point or frames.dtype == torch.bool:
            raise ValueError(f"durations must be whole frames (an integer dtype), got {frames.dtype}")
        if (frames < 1).any():
            raise ValueError(f"durations must be >= 1 frame, got {int(frames.min())}")
        return frames.long()

    def _check_batch(self, units: Tensor, name: str) -> Tensor:
        if units.dim() != 2 or units.shape[1] == 0:
            raise ValueError(f"{name} must have shape (B, T) with T >= 1, got {tuple(units.shape)}")
        if units.dtype.is_floating_point or units.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer unit ids, got dtype {units.dtype}")
        low, high = int(units.min()), int(units.max())
        if low < 0 or high >= self.config.num_units:
            raise ValueError(f"{name} must be unit ids in [0, {self.config.num_units}), got {low if low < 0 else high}")
        return units

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write `vocoder.safetensors` (weights) and `vocoder.yaml` (config) into `directory`."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:  # a temporary folder renamed into place: never half a model
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))

        with atomic_directory(directory) as tmp:
            write(tmp)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> UnitVocoder:
        """Read a model that `save` wrote."""
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name}; not a vocoder directory written by UnitVocoder.save")
        data = yaml.safe_load((directory / CONFIG_FILE).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{directory / CONFIG_FILE}: expected a mapping, got {type(data).__name__}")
        model = cls(from_dict(VocoderConfig, data))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.to(device).eval()
