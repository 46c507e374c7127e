"""The unit vocoder: deduplicated speech units -> 16 kHz waveform, offline or streaming.

Three parts, all causal (the generator with a fixed lookahead) so that a stream of units can be
voiced as it arrives:

1. `DurationPredictor`: unit embedding -> causal convolutions -> log duration (frames) of each unit;
   its output at unit i + duration_lookahead is unit i's duration, so it hears a few units ahead.
2. The units are repeated by their durations to the frame rate (50 Hz, one frame = HOP_SAMPLES).
3. `FrameGenerator`: causal ConvNeXt blocks at the frame rate -> log magnitude and phase of one STFT
   frame per unit frame (Vocos' iSTFT head, Siuzdak 2023), and `OverlapAdd`, our own inverse STFT.
   The generator's output at frame t + lookahead is audio frame t: each frame hears `lookahead`
   frames of the future (the next sound, where a run ends) for that many frames of latency; past
   the last frame the last unit is repeated.

Why an iSTFT head: the network runs at 50 frames a second rather than 16,000 samples a second, which
is what makes it much faster than real time on a CPU, and the inverse FFT is exact and cheap.
Why our own overlap-add rather than `torch.istft`: a stream must normalise each sample by the window
envelope of exactly the frames that cover it, and keep the unfinished tail between calls; doing it
by hand in blocks of one hop makes streamed audio equal offline audio to float precision.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speechllm.atomic import atomic_directory
from speechllm.config import SAMPLE_RATE, from_dict, to_dict
from speechllm.speech_out.config import HOP_SAMPLES, VocoderConfig

CONFIG_FILE = "vocoder.yaml"
WEIGHTS_FILE = "vocoder.safetensors"

MLP_RATIO = 3
"""Hidden width of each block's pointwise MLP, in multiples of dim (Vocos uses 3)."""
MAX_LOG_MAGNITUDE = math.log(100.0)
"""Vocos clips magnitudes at 100: an untrained or diverging head cannot blow up the waveform."""

UnitsLike = Sequence[int] | np.ndarray | Tensor
Cache = list[Tensor]


def check_units(units: UnitsLike, num_units: int, name: str = "units") -> Tensor:
    """A 1-D sequence of unit ids as a LongTensor (N,), each checked to lie in [0, num_units)."""
    t = units.detach().cpu() if isinstance(units, Tensor) else torch.as_tensor(np.asarray(units))
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of unit ids, got shape {tuple(t.shape)}")
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer unit ids, got dtype {t.dtype}")
    t = t.long()
    bad = ((t < 0) | (t >= num_units)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"{name}[{i}] must be a unit id in [0, {num_units}), got {int(t[i])}")
    return t


class CausalConv1d(nn.Module):
    """A Conv1d over (B, C, T) that only sees the past: kernel - 1 frames of left padding, none on the right.

    `history` holds the kernel - 1 input frames that came before `x` (B, C_in, kernel - 1); None means
    the sequence starts here, which pads with zeros exactly as the offline call does. The call returns
    the output (B, C_out, T) and the history for the next chunk, so chunked calls equal one long call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, groups=groups)
        self.context = kernel - 1

    def forward(self, x: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if history is None:
            history = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([history, x], dim=-1)  # B, C, T -> B, C, context + T
        return self.conv(x), x[..., x.shape[-1] - self.context :]


class DurationPredictor(nn.Module):
    """Deduplicated units (B, N) -> log durations (B, N), in frames; causal over the units.

    Trained by regression on the log of the run lengths (L1), so rounding `exp` at inference gives
    the median-like duration rather than the mean that a linear-domain loss would be pulled to.
    """

    def __init__(
        self, num_units: int, dim: int, max_duration: int, layers: int = 2, kernel: int = 3, lookahead: int = 0
    ) -> None:
        super().__init__()
        if max_duration < 1:
            raise ValueError(f"max_duration must be >= 1, got {max_duration}")
        self.num_units, self.max_duration, self.lookahead = num_units, max_duration, lookahead
        self.layers, self.kernel = layers, kernel
        self.embed = nn.Embedding(num_units, dim)
        self.convs = nn.ModuleList(CausalConv1d(dim, dim, kernel) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.out = nn.Linear(dim, 1)

    def forward(self, units: Tensor, cache: Cache | None = None) -> tuple[Tensor, Cache]:
        """units (B, N) -> log durations (B, N) and the convolutions' histories for the next chunk."""
        x = self.embed(units).transpose(1, 2)  # B, N, C -> B, C, N
        new_cache: Cache = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x, history = conv(x, None if cache is None else cache[i])
            new_cache.append(history)
            x = norm(F.relu(x).transpose(1, 2)).transpose(1, 2)  # LayerNorm over C: B, C, N -> B, N, C -> back
        return self.out(x.transpose(1, 2)).squeeze(-1), new_cache  # B, C, N -> B, N, 1 -> B, N

    def predict(self, units: Tensor) -> Tensor:
        """Whole sequences (B, N) -> log durations (B, N) with the lookahead: the last unit of each
        row is repeated past its end (pad rows with their last unit, not zeros)."""
        future = units[:, -1:].expand(-1, self.lookahead)  # B, 1 -> B, lookahead
        log_durations, _ = self(torch.cat([units, future], dim=1))  # B, N + lookahead
        return log_durations[:, self.lookahead :]

    def durations(self, log_durations: Tensor) -> Tensor:
        """Log durations -> whole frames in [1, max_duration] (LongTensor of the same shape)."""
        frames = torch.round(torch.exp(log_durations.clamp(max=math.log(self.max_duration + 1))))
        return frames.clamp(1, self.max_duration).long()


class ConvNeXtBlock(nn.Module):
    """Vocos' block made causal: depthwise conv (left padding only), LayerNorm, pointwise MLP, scaled residual."""

    def __init__(self, dim: int, kernel: int, hidden: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        # A small residual scale keeps the deep stack near identity at init (ConvNeXt's layer scale).
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, C, T) -> (B, C, T) and the depthwise conv's history."""
        y, history = self.dwconv(x, history)
        y = self.down(F.gelu(self.up(self.norm(y.transpose(1, 2))))) * self.gamma  # B, C, T -> B, T, C
        return x + y.transpose(1, 2), history  # B, T, C -> B, C, T


class FrameGenerator(nn.Module):
    """Frame-level units (B, T) -> complex STFT frames (B, T, n_fft // 2 + 1), causal over frames."""

    def __init__(self, num_units: int, dim: int, blocks: int, kernel: int, n_fft: int) -> None:
        super().__init__()
        self.num_units, self.n_fft, self.bins = num_units, n_fft, n_fft // 2 + 1
        self.embed = nn.Embedding(num_units, dim)
        self.conv_in = CausalConv1d(dim, dim, kernel)
        self.norm_in = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, kernel, MLP_RATIO * dim, 1.0 / blocks) for _ in range(blocks))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2 * self.bins)
        self.receptive_field = 1 + (1 + blocks) * (kernel - 1)
        """Frames (the current one included) that one output frame depends on."""
        self.apply(_init_weights)

    def forward(self, frame_units: Tensor, cache: Cache | None = None) -> tuple[Tensor, Cache]:
        """frame_units (B, T) -> spectrum (B, T, bins) complex64, and the histories for the next chunk."""
        x, history = self.conv_in(self.embed(frame_units).transpose(1, 2), None if cache is None else cache[0])
        new_cache = [history]
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)  # LayerNorm over C: B, C, T -> B, T, C -> back
        for i, block in enumerate(self.blocks):
            x, history = block(x, None if cache is None else cache[i + 1])
            new_cache.append(history)
        out = self.head(self.norm_out(x.transpose(1, 2)))  # B, C, T -> B, T, C -> B, T, 2 * bins
        log_mag, phase = out.float().chunk(2, dim=-1)  # B, T, 2 * bins -> 2 x (B, T, bins)
        magnitude = torch.exp(log_mag.clamp(max=MAX_LOG_MAGNITUDE))
        return torch.polar(magnitude, phase), new_cache


def _init_weights(module: nn.Module) -> None:
    # Vocos' initialisation: small truncated normals keep the initial spectra quiet and the residual
    # stream well scaled; PyTorch's default fan-in uniform is ~3x larger for these widths.
    if isinstance(module, nn.Conv1d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class OverlapAdd(nn.Module):
    """Inverse STFT by hand: irfft each frame, multiply by a periodic Hann window, add at hop offsets,
    divide by the summed squared window of the frames that cover each sample.

    Frame t covers samples [t * hop - d, t * hop - d + n_fft) of the output, d = (n_fft - hop) / 2,
    so it is centred on its own hop [t * hop, (t + 1) * hop), and T frames give exactly T * hop
    samples. Work is done in blocks of one hop: with R = n_fft / hop, frame t adds its r-th block to
    block t + r of an internal "stream" that starts d samples before the output.
    """

    window: Tensor

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        # One frame per hop must overlap another: with R = 1 the Hann envelope is zero at the window's edges.
        if n_fft % hop or n_fft < 2 * hop:
            raise ValueError(f"n_fft must be a multiple of {hop} and at least {2 * hop}, got {n_fft}")
        self.n_fft, self.hop, self.overlap = n_fft, hop, n_fft // hop
        self.delay = (n_fft - hop) // 2
        """Samples the output lags the stream: d above."""
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def blocks(self, spectrum: Tensor) -> Tensor:
        """Complex frames (B, T, n_fft // 2 + 1) -> windowed time blocks (B, T, R, hop)."""
        frames = torch.fft.irfft(spectrum, n=self.n_fft, dim=-1) * self.window  # B, T, n_fft
        return frames.reshape(*frames.shape[:2], self.overlap, self.hop)  # B, T, n_fft -> B, T, R, hop

    def envelope_blocks(self, frames: int) -> Tensor:
        """The squared window laid out like `blocks` of `frames` frames: (1, frames, R, hop)."""
        squared = self.window.square().reshape(1, 1, self.overlap, self.hop)  # n_fft -> 1, 1, R, hop
        return squared.expand(1, frames, self.overlap, self.hop)

    def accumulate(self, blocks: Tensor, tail: Tensor | None = None) -> Tensor:
        """Blocks (B, T, R, hop) -> stream blocks (B, T + R - 1, hop): frame t's block r lands on t + r.

        `tail` (B, R - 1, hop) is what earlier frames left on the first R - 1 stream blocks.
        """
        t, r = blocks.shape[1:3]
        out = sum(F.pad(blocks[:, :, i], (0, 0, i, r - 1 - i)) for i in range(r))  # R x (B, T + R - 1, hop)
        assert isinstance(out, Tensor)
        if tail is not None:
            out = out + F.pad(tail, (0, 0, 0, t))  # B, R - 1, hop -> B, T + R - 1, hop
        return out

    def forward(self, spectrum: Tensor) -> Tensor:
        """Complex frames (B, T, bins) -> audio (B, T * hop), all frames known (offline)."""
        b, t = spectrum.shape[:2]
        numerator = self.accumulate(self.blocks(spectrum)).reshape(b, -1)  # B, T + R - 1, hop -> B, samples
        envelope = self.accumulate(self.envelope_blocks(t)).reshape(1, -1)
        # Slice before dividing: the stream's first sample has a zero envelope (w[0] = 0), and 0/0
        # there would send NaN gradients back even though the sample is cut.
        keep = slice(self.delay, self.delay + t * self.hop)
        return numerator[:, keep] / envelope[:, keep]


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
        ids = self._check_sequence(units).to(self._device)
        log_durations = self.duration_predictor.predict(ids[None])  # N -> 1, N
        return self.duration_predictor.durations(log_durations[0]).cpu()

    @torch.inference_mode()
    def synthesize(self, units: UnitsLike, durations: UnitsLike | None = None) -> np.ndarray:
        """Deduplicated units (N,) -> float32 audio at SAMPLE_RATE of sum(durations) * HOP_SAMPLES samples.

        `durations` (N,) in frames, each >= 1; predicted when None.
        """
        ids = self._check_sequence(units)
        frames = self.predict_durations(ids) if durations is None else self._check_durations(durations, len(ids))
        frame_units = torch.repeat_interleave(ids, frames).to(self._device)  # N -> sum(durations)
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
    def _device(self) -> torch.device:
        return self.generator.head.weight.device

    def _check_sequence(self, units: UnitsLike) -> Tensor:
        ids = check_units(units, self.config.num_units)
        if ids.numel() == 0:
            raise ValueError("units must be a non-empty sequence of unit ids, got 0 units")
        return ids

    def _check_durations(self, durations: UnitsLike, n: int) -> Tensor:
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


class VocoderStream:
    """Incremental synthesis of one utterance; the concatenation of every `push` and the final `flush`
    equals `UnitVocoder.synthesize` of all the units (up to float rounding), however they are chunked.

    Chunk boundaries: every part is causal up to a fixed lookahead. A unit's duration depends on
    the units before it and `duration_lookahead` after it, so the last that many units of a push
    wait for the next push; audio frame t is the generator's output at frame t + lookahead, so the
    last `lookahead` frames of a push are voiced by the next push. At `flush` the last unit stands
    in for the missing future of both, as offline synthesis does. Each causal convolution keeps its last
    kernel - 1 input frames (units for the duration predictor) as history, the same values offline
    zero-padding and the earlier frames give, so state is a fixed size and a push costs the same at
    unit 2,000 as at unit 10. The overlap-add waits too: a sample is final once every frame whose
    window covers it has arrived, so a push returns audio up to d = (n_fft - hop) / 2 samples before
    the end of its last voiced frame and holds the n_fft - hop samples of unfinished tail (numerator
    and envelope) for the next push;
    `flush` normalises what the last frames left and cuts it at the utterance's end.
    """

    def __init__(self, vocoder: UnitVocoder) -> None:
        self.vocoder = vocoder
        self.duration_cache: Cache | None = None
        self.generator_cache: Cache | None = None
        ola = vocoder.ola
        device = vocoder._device
        self.tail = torch.zeros(1, ola.overlap - 1, ola.hop, device=device)  # numerator of unfinished blocks
        self.tail_envelope = torch.zeros(1, ola.overlap - 1, ola.hop, device=device)
        self.to_skip = ola.delay  # stream samples before the output's first sample
        self.early_outputs = vocoder.config.lookahead  # generator frames before audio frame 0
        self.early_durations = vocoder.config.duration_lookahead  # predictor outputs before unit 0's
        self.waiting = torch.zeros(0, dtype=torch.long)  # units whose durations need later units
        self.given: bool | None = None  # whether pushes bring their own durations
        self.last_unit: Tensor | None = None
        self.frames = 0
        self.emitted = 0
        self.closed = False

    @torch.inference_mode()
    def push(self, units: UnitsLike, durations: UnitsLike | None = None) -> np.ndarray:
        """Append deduplicated units (N,) and optionally their durations (N,); returns the audio that
        is final now (float32, possibly empty)."""
        if self.closed:
            raise ValueError("push after flush: this stream is finished; start another with vocoder.streaming()")
        vocoder = self.vocoder
        ids = check_units(units, vocoder.config.num_units)
        if ids.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        given = durations is not None
        if self.given is not None and self.given != given:
            raise ValueError("durations must be given with every push of a stream or with none")
        self.given = given
        # The predictor runs even when durations are given: its history must hold every unit.
        predicted = self._predict(ids)
        if durations is not None:
            return self._voice(ids, vocoder._check_durations(durations, len(ids)))
        self.waiting = torch.cat([self.waiting, ids])
        ready, self.waiting = self.waiting[: len(predicted)], self.waiting[len(predicted) :]
        return self._voice(ready, predicted)

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        """End the utterance: the units still waiting for their durations, the last `lookahead`
        frames and the held-back tail, cut so the total is frames * HOP_SAMPLES samples."""
        if self.closed:
            raise ValueError("flush called twice: this stream is finished")
        self.closed = True
        waiting = np.zeros(0, dtype=np.float32)
        if len(self.waiting):  # their future is the last unit repeated, as offline
            lookahead = self.vocoder.config.duration_lookahead
            predicted = self._predict(self.waiting[-1:].expand(lookahead))
            waiting = self._voice(self.waiting, predicted)
        last = np.zeros(0, dtype=np.float32)
        if self.last_unit is not None and self.vocoder.config.lookahead:
            last = self._generate(self.last_unit.expand(self.vocoder.config.lookahead))
        remaining = self.frames * HOP_SAMPLES - self.emitted
        tail = self._emit(self.tail.reshape(-1), self.tail_envelope.reshape(-1), remaining)
        return np.concatenate([waiting, last, tail])

    def _predict(self, ids: Tensor) -> Tensor:
        """Units (N,) into the duration predictor -> frames (M,) of the M <= N earliest units whose
        lookahead is now complete (the first `duration_lookahead` outputs of a stream are no unit's)."""
        predictor = self.vocoder.duration_predictor
        log_durations, self.duration_cache = predictor(ids[None].to(self.vocoder._device), self.duration_cache)
        early = min(self.early_durations, ids.numel())
        self.early_durations -= early
        return predictor.durations(log_durations[0, early:]).cpu()

    def _voice(self, ids: Tensor, frames: Tensor) -> np.ndarray:
        """Units (N,) lasting frames (N,) through the generator; the audio that is final."""
        if ids.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        frame_units = torch.repeat_interleave(ids, frames).to(self.vocoder._device)  # N -> sum(frames)
        self.frames += frame_units.numel()
        self.last_unit = frame_units[-1:]
        return self._generate(frame_units)

    def _generate(self, frame_units: Tensor) -> np.ndarray:
        """Frame-level units (T,) through the generator and the overlap-add; the audio that is final."""
        ola = self.vocoder.ola
        spectrum, self.generator_cache = self.vocoder.generator(frame_units[None], self.generator_cache)
        early = min(self.early_outputs, spectrum.shape[1])
        self.early_outputs -= early
        spectrum = spectrum[:, early:]  # 1, T, bins -> 1, new, bins: outputs before audio frame 0 dropped
        new = spectrum.shape[1]
        if new == 0:
            return np.zeros(0, dtype=np.float32)
        numerator = ola.accumulate(ola.blocks(spectrum), self.tail)  # 1, new + R - 1, hop
        envelope = ola.accumulate(ola.envelope_blocks(new), self.tail_envelope)
        # Stream blocks before the first new frame's index + new are final: no later frame reaches them.
        self.tail, self.tail_envelope = numerator[:, new:], envelope[:, new:]
        return self._emit(numerator[:, :new].reshape(-1), envelope[:, :new].reshape(-1), None)

    def _emit(self, numerator: Tensor, envelope: Tensor, limit: int | None) -> np.ndarray:
        skip = min(self.to_skip, numerator.numel())
        self.to_skip -= skip
        numerator, envelope = numerator[skip:], envelope[skip:]
        if limit is not None:
            numerator, envelope = numerator[:limit], envelope[:limit]
        self.emitted += numerator.numel()
        return (numerator / envelope).float().cpu().numpy()

    def state_numel(self) -> int:
        """Numbers held between pushes (histories and tail): constant however long the stream runs."""
        held = [self.tail, self.tail_envelope, self.waiting]
        held += [*(self.duration_cache or []), *(self.generator_cache or [])]
        return sum(t.numel() for t in held)
