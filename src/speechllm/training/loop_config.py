"""The training loop's configuration and learning-rate schedule (no torch needed to read or check them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class LoopConfig:
    """Everything `fit` needs besides the model, the loss and the data."""

    out_dir: str
    """Where metrics.jsonl, curves.png and checkpoints/ are written."""
    max_steps: int = 1000
    """Optimizer steps of the whole run (a resumed run continues up to the same number)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss of each is divided by this number."""
    lr: float = 1e-3
    """Peak learning rate of the default parameter group."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (for groups that do not set their own)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    warmup_steps: int = 100
    """Linear warm-up to `lr` over this many steps, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    clip_grad: float | None = 1.0
    """Clip the global gradient norm to this value; None never clips (the norm is still logged)."""
    eval_every: int = 200
    """Call `eval_fn` every this many steps and at the end; 0 never calls it."""
    save_every: int = 200
    """Checkpoint every this many steps; the last step is always saved. 0 saves only at the end."""
    log_every: int = 10
    """Write a metrics.jsonl record (and update the progress bar's loss) every this many steps."""
    seed: int = 0
    """Seeds Python, NumPy and torch at the start of a fresh run (rank r uses seed + r)."""
    precision: str = "auto"
    """`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32`, or `bf16` (autocast on any device)."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted after each save."""
    device: str = "auto"
    """`auto` (cuda:LOCAL_RANK when CUDA is available, else cpu) or a torch device string."""
    fsdp: bool = False
    """Shard with FSDP2 `fully_shard` instead of DDP when several processes run (CUDA + nccl only)."""
    fsdp_units: tuple[str, ...] = ()
    """Class names of the blocks FSDP shards one by one; empty uses the HF `_no_split_modules`."""
    find_unused_parameters: bool = False
    """Passed to DDP; set it when some trainable parameters get no gradient in a step."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""

    def __post_init__(self) -> None:
        # YAML gives lists
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.fsdp_units = tuple(self.fsdp_units)
        if not self.out_dir:
            raise ValueError(f"LoopConfig.out_dir must be a directory path, got {self.out_dir!r}")
        for name in ("max_steps", "grad_accum", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"LoopConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"LoopConfig.warmup_steps must be <= max_steps ({self.max_steps}), got {self.warmup_steps}"
            )
        if not self.lr > 0:
            raise ValueError(f"LoopConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"LoopConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"LoopConfig.betas must be two values in [0, 1), got {self.betas!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"LoopConfig.clip_grad must be > 0 or None, got {self.clip_grad!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"LoopConfig.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step + 1` (LambdaLR counts from 0).

    Step k (1-based) uses k / warmup during warm-up, 1 at k = warmup, then a cosine that reaches
    `min_lr_ratio` exactly at k = max_steps.
    """
    k = min(step + 1, max_steps)
    if k <= warmup_steps:
        return k / warmup_steps
    progress = (k - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
