"""Training: the shared loop, resumable batches, checkpoints and distributed launch."""

from speechllm.training.checkpoint import latest_checkpoint, load_checkpoint
from speechllm.training.distributed import cleanup_distributed, setup_distributed, unwrap
from speechllm.training.loop import fit
from speechllm.training.loop_config import LoopConfig, lr_factor
from speechllm.training.sampler import Batches, ResumableSampler

__all__ = [
    "Batches",
    "LoopConfig",
    "ResumableSampler",
    "cleanup_distributed",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "setup_distributed",
    "unwrap",
]
