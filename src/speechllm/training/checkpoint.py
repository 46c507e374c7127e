"""Training checkpoints: trainable weights, optimizer, scheduler, data position and RNG states.

Layout under `out_dir/checkpoints/`:

    step-0000200/trainable.safetensors   only the parameters with requires_grad, by module path
    step-0000200/state.pt                step, optimizer, scheduler, batches, RNG states, elapsed
    latest                               the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory, fsynced and renamed into place, and
`latest` is replaced the same way, so a run killed at any moment leaves either the new checkpoint
or none of it; `latest_checkpoint` never returns a half-written one. Model and optimizer states go
through `torch.distributed.checkpoint.state_dict`, which gives the same full, unsharded,
name-keyed dicts for a plain module, DDP and FSDP2.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from speechllm.atomic import TMP_PREFIX, atomic_directory, atomic_write
from speechllm.training.distributed import unwrap

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = TMP_PREFIX  # what a killed save leaves behind starts with it (see clean_partial)

# Full (unsharded) state dicts, gathered to rank 0 on the CPU; frozen weights are never saved.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=False)


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


# --- RNG ------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as plain types `torch.load` accepts safely."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    assert isinstance(keys, np.ndarray)
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- model and optimizer state ----------------------------------------------------------------------


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in unwrap(model).named_parameters() if p.requires_grad}


def gather_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Trainable weights and optimizer state, unsharded on the CPU. A collective under FSDP (call it
    on every rank); complete on rank 0, possibly empty elsewhere."""
    names = trainable_names(model)
    state = get_model_state_dict(model, options=_GATHER)
    # The options keep buffers too; only trainable parameters belong in the checkpoint.
    weights = {k: v.detach().contiguous() for k, v in state.items() if k in names and isinstance(v, torch.Tensor)}
    return weights, get_optimizer_state_dict(model, optimizer, options=_GATHER)


def restore_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor], optim_state: dict[str, Any]
) -> None:
    """Load what `gather_training_state` returned into a model built and wrapped the same way."""
    names = trainable_names(model)
    missing, unexpected = sorted(names - weights.keys()), sorted(weights.keys() - names)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the model's trainable parameters: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (expected {len(names)} tensors, got {len(weights)})"
        )
    set_model_state_dict(model, dict(weights), options=_LOAD)  # type: ignore[arg-type]
    set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))


# --- files ------------------------------------------------------------------------------------------


def save_checkpoint(
    out_dir: str | Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], keep_last: int
) -> Path:
    """Write `out_dir/checkpoints/step-XXXXXXX` atomically, point `latest` at it, keep the newest
    `keep_last` checkpoints. Returns the checkpoint directory."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    final = root / step_dir_name(step)
    with atomic_directory(final, durable=True) as tmp:  # the same step saved again replaces the old one
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "step": str(step)})
        torch.save(state, tmp / STATE_FILE)
    with atomic_write(root / LATEST_FILE, durable=True) as f:
        f.write(final.name + "\n")
    _prune(root, keep_last, keep=final.name)
    return final


def _is_complete(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file() and (path / STATE_FILE).is_file()


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories, oldest first."""
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and _is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def _prune(root: Path, keep_last: int, keep: str) -> None:
    dirs = _step_dirs(root)
    for _, path in dirs[: max(0, len(dirs) - keep_last)]:
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def clean_partial(out_dir: str | Path) -> None:
    """Remove temporary directories and files that a killed save left behind."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    for p in root.glob(f"{_TMP_PREFIX}*") if root.is_dir() else ():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, else the highest complete `step-*` directory, else None."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if _STEP_DIR.match(named.name) and _is_complete(named):
            return named
    dirs = _step_dirs(root)
    return dirs[-1][1] if dirs else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`(trainable weights, state)` of one checkpoint directory, on the CPU."""
    path = Path(path)
    if not _is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint: expected {WEIGHTS_FILE} and {STATE_FILE}")
    weights = load_file(str(path / WEIGHTS_FILE))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return weights, state
