"""Compressors: shorten the encoder's frame sequence before the adaptor.

Whisper emits 50 frames a second; an LLM reads far fewer positions per second of text, so each
compressor maps (B, T, D) frames with per-sample lengths to (B, T', D') and exact new lengths.
Frames past a sample's length are ignored, so a padded batch gives each sample what it would get
alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.config import CTC_MODES, CompressorConfig


class Compressed(NamedTuple):
    x: Tensor  # B, T', D'  (zeros past each length)
    lengths: Tensor  # B
    ctc_logits: Tensor | None = None  # B, T, V: the CTC head's output, for its loss


def _valid_mask(lengths: Tensor, t: int) -> Tensor:
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]  # B, T


def _check(x: Tensor, lengths: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"compressor input must be (B, T, D), got shape {tuple(x.shape)}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}")
    if bool((lengths > x.shape[1]).any()) or bool((lengths < 1).any()):
        raise ValueError(f"lengths must be in [1, {x.shape[1]}], got {lengths.tolist()}")


class Compressor(nn.Module):
    """Base of all compressors: (B, T, D) frames + lengths -> `Compressed`."""

    def output_dim(self, input_dim: int) -> int:
        """Width of the output frames for input frames of width `input_dim`."""
        raise NotImplementedError(f"{type(self).__name__} must define output_dim")


class StackCompressor(Compressor):
    """Concatenate every k consecutive frames (LLaMA-Omni): T' = ceil(T/k), D' = k*D.

    A sample's last group is completed with zeros rather than dropped, so no audio is lost.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def output_dim(self, input_dim: int) -> int:
        return input_dim * self.k

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return (lengths + self.k - 1) // self.k

    def forward(self, x: Tensor, lengths: Tensor) -> Compressed:
        _check(x, lengths)
        b, t, d = x.shape
        x = x.masked_fill(~_valid_mask(lengths, t)[..., None], 0.0)  # also clears NaN/inf in padding
        x = F.pad(x, (0, 0, 0, (-t) % self.k))
        y = x.reshape(b, -1, self.k * d)  # B, T, D -> B, T/k, k*D
        return Compressed(y, self.output_lengths(lengths))


class PoolCompressor(Compressor):
    """Average every k consecutive frames: T' = ceil(T/k), D' = D; a short last group averages its real frames."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def output_dim(self, input_dim: int) -> int:
        return input_dim

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return (lengths + self.k - 1) // self.k

    def forward(self, x: Tensor, lengths: Tensor) -> Compressed:
        _check(x, lengths)
        b, t, d = x.shape
        pad = (-t) % self.k
        valid_bool = F.pad(_valid_mask(lengths, t), (0, pad))  # B, T+pad
        valid = valid_bool.to(x.dtype)
        x = F.pad(x, (0, 0, 0, pad)).masked_fill(~valid_bool[..., None], 0.0)
        sums = x.reshape(b, -1, self.k, d).sum(2)  # B, T, D -> B, T/k, k, D -> B, T/k, D
        counts = valid.reshape(b, -1, self.k).sum(2).clamp(min=1)  # B, T/k
        return Compressed(sums / counts[..., None], self.output_lengths(lengths))


class CTCCompressor(Compressor):
    """Speech-LLaMA's CTC compressor (Wu et al., 2023, "On decoder-only architecture for
    speech-to-text and large language model integration").

    A linear CTC head labels every frame. `blank_removal` keeps the frames whose best label is not
    blank; `frame_average` also merges each run of consecutive frames sharing one non-blank label
    into their mean. Output lengths depend on the audio, so they are known only after this runs.
    A sample whose frames are all blank keeps its single least-blank frame, so no audio vanishes.
    The head trains through the CTC loss on `ctc_logits`; frame selection itself passes no gradient.
    """

    def __init__(self, input_dim: int, vocab_size: int, mode: str, blank_id: int = 0) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"CTC vocab_size must be >= 2 (labels + blank), got {vocab_size}")
        if mode not in CTC_MODES:
            raise ValueError(f"CTC mode must be one of {list(CTC_MODES)}, got {mode!r}")
        if not 0 <= blank_id < vocab_size:
            raise ValueError(f"CTC blank_id must be in [0, {vocab_size}), got {blank_id}")
        self.head = nn.Linear(input_dim, vocab_size)
        self.mode = mode
        self.blank_id = blank_id

    def output_dim(self, input_dim: int) -> int:
        return input_dim

    def forward(self, x: Tensor, lengths: Tensor) -> Compressed:
        _check(x, lengths)
        logits = self.head(x)  # B, T, D -> B, T, V
        labels = logits.argmax(-1)  # B, T
        seqs = []
        for i in range(x.shape[0]):
            n = int(lengths[i])
            seqs.append(self._select(x[i, :n], labels[i, :n], logits[i, :n]))
        out_lengths = torch.tensor([s.shape[0] for s in seqs], device=x.device)
        return Compressed(nn.utils.rnn.pad_sequence(seqs, batch_first=True), out_lengths, logits)

    def _select(self, x: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        return select_frames(x, labels, logits, self.blank_id, self.mode)


def select_frames(x: Tensor, labels: Tensor, logits: Tensor, blank_id: int, mode: str) -> Tensor:
    """One sample's frames x (T, D) with CTC labels (T,) and logits (T, V) -> the kept frames (T', D).

    `blank_removal` keeps non-blank frames; `frame_average` also merges each run of one non-blank
    label into its mean. All-blank input keeps its single least-blank frame.
    """
    keep = labels != blank_id
    if not bool(keep.any()):
        blank_logprob = logits.log_softmax(-1)[:, blank_id]
        return x[blank_logprob.argmin()][None]
    if mode == "blank_removal":
        return x[keep]
    # A run starts where the label changes; blank frames split runs and are then dropped.
    starts = torch.ones_like(labels, dtype=torch.bool)
    starts[1:] = labels[1:] != labels[:-1]
    run_id = torch.cumsum(starts.long(), 0) - 1  # T: index of each frame's run
    n_runs = int(run_id[-1]) + 1
    sums = torch.zeros(n_runs, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, run_id, x)
    counts = torch.bincount(run_id, minlength=n_runs).to(x.dtype)
    run_label = torch.zeros(n_runs, dtype=labels.dtype, device=x.device).scatter_(0, run_id, labels)
    means = sums / counts[:, None]
    return means[run_label != blank_id]


def build_compressor(config: CompressorConfig, input_dim: int, llm_vocab_size: int = 0) -> Compressor:
    """The compressor `config.kind` names, for encoder frames of width `input_dim`."""
    if config.kind == "stack":
        return StackCompressor(config.k)
    if config.kind == "pool":
        return PoolCompressor(config.k)
    if config.kind == "ctc":
        vocab = config.ctc_vocab_size or llm_vocab_size + 1
        if vocab < 2:
            raise ValueError("ctc compressor needs compressor.ctc_vocab_size or an LLM vocabulary to size its head")
        blank = vocab - 1 if config.ctc_blank_id == -1 else config.ctc_blank_id
        return CTCCompressor(input_dim, vocab, config.ctc_mode, blank)
    raise ValueError(f"unknown compressor kind {config.kind!r}; expected one of stack, pool, ctc")
