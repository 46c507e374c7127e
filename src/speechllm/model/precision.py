"""Lower precision where the hardware multiplies bfloat16 natively (`auto` choices), float32 elsewhere:
the encoder's layers (`encoder.precision`), the Whisper recognizer's text decoder
(`bridge.precision`), and the screening of that decoder's float32 logits (`bridge.logits`).

The encoder runs its layers under bfloat16 autocast (one call per 30 s window, so recasting its
frozen weights costs little); with rescoring its held-out figures equal float32's and it runs ~2.3x
faster on a CPU with AMX, so the default is `auto` (README, Figures).

The decoder's linear layers are held in bfloat16 and multiply in it, and its logits read a bfloat16
copy of the token table; layer norms, input rows, attention softmax, residual sums, logits and
beam scores stay float32 (`LowPrecisionLinear`). Not autocast: a frozen weight is cast again at
every call under autocast, which made decoding slower, not faster; with every weight in bfloat16,
norms too, it cost words. Measured (benchmarks/heldout_table.py `--override bridge.precision=bfloat16`;
README, Figures): first token about 0.14 s sooner on a CPU with AMX; held-out WER still no worse
than Whisper's own on every set, but people 0.228 vs float32's 0.218 and spoken-question agreement
56.9% vs 58.5%, so the default stays float32. Screening (`resolve_screening`) keeps the decoder
float32 and only estimates the logits of tokens no beam takes. On a CPU without native bfloat16 it
is emulated and slower, so `auto` keeps float32 there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.config import LOGITS, PRECISIONS

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU's flags (Linux `/proc/cpuinfo`) include AMX-BF16 or AVX512-BF16; False where
    they cannot be read."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> `bfloat16` on a CUDA device that supports it or a CPU with native bf16, else `float32`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


def resolve_screening(logits: str, device: torch.device) -> bool:
    """Whether the float32 decoder screens its logits in bfloat16 (`bridge.logits`): `screened`
    always, `exact` never, `auto` where bfloat16 multiplies natively (a CPU with AMX / AVX512-BF16,
    or CUDA that supports it)."""
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {LOGITS}, got {logits!r}")
    if logits != "auto":
        return logits == "screened"
    return resolve_precision("auto", device) == "bfloat16"


class LowPrecisionLinear(nn.Module):
    """A linear layer whose weight and bias are held and multiplied in a lower precision; its input
    is cast to it and its output back to the input's dtype, so norms, softmax and residual sums
    around it stay float32 (what autocast does, without casting a frozen weight at every call)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def lower_linears(module: nn.Module, dtype: torch.dtype) -> None:
    """Replace every `nn.Linear` inside `module` by a `LowPrecisionLinear` in `dtype` (same parameter
    names)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, LowPrecisionLinear(child, dtype))
