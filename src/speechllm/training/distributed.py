"""Process groups and model wrapping for multi-process training.

Launch with torchrun (`torchrun --nproc_per_node N -m speechllm ...`): it sets `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`, which `setup_distributed` reads. Without them the run
is a single process and no process group is created, so the same script works with plain `python`.
Every helper here is a no-op in a single process, so the loop calls them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def default_device(local_rank: int = 0) -> torch.device:
    """`cuda:local_rank` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return _env_int("LOCAL_RANK", rank_and_world()[0])


def setup_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun described; returns `(rank, world_size, device)`.

    `backend` defaults to nccl on CUDA and gloo on CPU. Calling it again (or after the caller made
    its own group) returns the existing group's values.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, {world_size}), got {rank}")
    device = default_device(local_rank)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return rank, world_size, device


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that writes files and shows progress (rank 0)."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list in a single process)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of a float tensor over ranks (for logging)."""
    if rank_and_world()[1] == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / rank_and_world()[1]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DistributedDataParallel wrapper (FSDP2 shards in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _fsdp_unit_classes(model: nn.Module) -> set[str]:
    """Class names to shard one by one: the blocks Hugging Face models declare unsplittable."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def wrap_model(
    model: nn.Module,
    device: torch.device,
    *,
    fsdp: bool = False,
    fsdp_units: Iterable[str] = (),
    bf16_params: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Wrap `model` (already on `device`) for data-parallel training; unchanged in one process.

    DDP only when the model has trainable parameters (DDP refuses a model without any). With
    `fsdp`, FSDP2 `fully_shard` is applied to every module whose class name is in `fsdp_units`
    (default: the HF `_no_split_modules` blocks found in the model), then to the root; the module
    is sharded in place and returned. FSDP needs CUDA and nccl; it is not tested on CPU.
    """
    if fsdp and device.type != "cuda":
        raise RuntimeError(f"LoopConfig.fsdp=True needs CUDA devices and the nccl backend, got device {device}")
    world = rank_and_world()[1]
    if world == 1:
        return model
    if fsdp:
        return _fully_shard(model, device, set(fsdp_units) or _fsdp_unit_classes(model), bf16_params)
    if not any(p.requires_grad for p in model.parameters()):
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def _fully_shard(model: nn.Module, device: torch.device, units: set[str], bf16_params: bool) -> nn.Module:
    backend = dist.get_backend()
    if device.type != "cuda" or backend != "nccl":
        raise RuntimeError(
            f"LoopConfig.fsdp=True needs CUDA devices and the nccl backend, got device {device} and backend "
            f"{backend!r}; use DDP (fsdp=False) on CPU"
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Gradients are reduced in fp32 even when parameters are gathered in bf16, as torchtune does.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs: dict[str, Any] = {"mp_policy": mp} if mp is not None else {}
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in units:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model
