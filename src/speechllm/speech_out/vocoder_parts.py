"""The unit vocoder's parts, which `UnitVocoder` (speechllm.speech_out.vocoder) chains: the duration
predictor, the frame generator and the overlap-add; and the check of unit ids that its offline and
streaming synthesis share.

Every convolution is causal and takes the history that came before its input, so chunked calls
equal one long call: what lets `VocoderStream` (speechllm.speech_out.vocoder_stream) voice units as
they arrive.

Why an iSTFT head: the network runs at 50 frames a second rather than 16,000 samples a second, which
is what makes it much faster than real time on a CPU, and the inverse FFT is exact and cheap.
Why our own overlap-add rather than `torch.istft`: a stream must normalise each sample by the window
envelope of exactly the frames that cover it, and keep the unfinished tail between calls; doing it
by hand in blocks of one hop makes streamed audio equal offline audio to float precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
