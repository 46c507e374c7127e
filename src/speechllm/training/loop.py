"""The model-agnostic training loop shared by every stage.

`fit(model, loss_fn, batches, config)` trains the parameters that have `requires_grad` with AdamW,
gradient accumulation, clipping, linear warm-up then cosine decay, bf16 autocast on CUDA, periodic
evaluation and atomic checkpoints, and resumes bit-exactly from the latest checkpoint. The caller
owns the model and the loss: `loss_fn(model, batch)` returns the loss tensor or a dict whose "loss"
is optimized and whose other entries are logged. Batches come from an endless, resumable iterable,
typically `Batches(ResumableSampler(...), make_batch)`.

Under torchrun, call `setup_distributed()` first: fit then wraps the model in DDP (or FSDP2), each
rank reads its shard of every global batch, and only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from speechllm.atomic import atomic_write
from speechllm.training import checkpoint as ckpt
from speechllm.training.distributed import (
    all_gather_object,
    barrier,
    default_device,
    local_rank,
    mean_across_ranks,
    rank_and_world,
    unwrap,
    wrap_model,
)
from speechllm.training.loop_config import LoopConfig, lr_factor
from speechllm.training.sampler import Batches, ResumableSampler

log = logging.getLogger(__name__)

# The loop's public names, with its config and sampler (their own modules) re-exported.
__all__ = ["Batches", "EvalFn", "LoopConfig", "LossFn", "ResumableSampler", "fit", "lr_factor"]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
LossFn = Callable[[nn.Module, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside dicts, lists and tuples (and objects with `.to`, e.g. BatchFeature) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(v, device) for v in batch)
    if callable(getattr(batch, "to", None)) and not isinstance(batch, str | bytes):
        return batch.to(device)
    return batch


def count_samples(batch: Any) -> int:
    """Samples in a batch, for samples/s: a tensor's first dim, a list's length, or inside a dict the
    first tensor's first dim, else the first list's length."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim():
                return v.shape[0]
        for v in batch.values():
            if isinstance(v, list | tuple) and v:
                return len(v)
        return 1
    if isinstance(batch, list | tuple) and batch:
        return len(batch) if not isinstance(batch[0], torch.Tensor) else count_samples(batch[0])
    return 1


# --- optimizer ------------------------------------------------------------------------------------


def _named_groups(model: nn.Module, param_groups: list[dict] | None) -> list[tuple[list[str], dict[str, Any]]]:
    """`param_groups` with parameters replaced by their names (sharding may replace the tensors);
    trainable parameters no group lists form a last group with the default options."""
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n: None for n, p in model.named_parameters() if p.requires_grad}  # ordered set
    if not trainable:
        raise ValueError("the model has no parameters with requires_grad=True; nothing to train")
    groups: list[tuple[list[str], dict[str, Any]]] = []
    seen: set[str] = set()
    for i, group in enumerate(param_groups or []):
        if "params" not in group:
            raise ValueError(f"param_groups[{i}] must have a 'params' entry, got keys {sorted(group)}")
        listed = [p if isinstance(p, str) else names.get(id(p), "<not in model>") for p in group["params"]]
        frozen = [n for n in listed if n not in trainable]
        if frozen:
            raise ValueError(f"param_groups[{i}] lists parameters that are frozen or not in the model: {frozen[:5]}")
        if seen & set(listed):
            raise ValueError(
                f"param_groups[{i}] repeats parameters of an earlier group: {sorted(seen & set(listed))[:5]}"
            )
        seen |= set(listed)
        groups.append((listed, {k: v for k, v in group.items() if k != "params"}))
    rest = [n for n in trainable if n not in seen]
    if rest:
        groups.append((rest, {}))
    return groups


def _optimizer(model: nn.Module, groups: list[tuple[list[str], dict[str, Any]]], config: LoopConfig):
    params = dict(model.named_parameters())
    torch_groups = [{"params": [params[n] for n in names], **opts} for names, opts in groups]
    return torch.optim.AdamW(torch_groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _uses_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if not _uses_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _grad_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
    return contextlib.nullcontext()


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        loss, extra = out, {}
    elif isinstance(out, Mapping) and "loss" in out:
        loss, extra = out["loss"], {k: v for k, v in out.items() if k != "loss"}
    else:
        raise TypeError(f"loss_fn must return a tensor or a dict with a 'loss' key, got {type(out).__name__}")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn's loss must be a scalar tensor, got shape {tuple(loss.shape)}")
    return loss, extra


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """The state of one `fit` call; its methods are the parts of a step."""

    model: nn.Module  # possibly wrapped (DDP / FSDP2)
    loss_fn: LossFn
    batches: Any
    config: LoopConfig
    eval_fn: EvalFn | None
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rank: int
    world: int
    step: int = 0
    elapsed_before: float = 0.0
    step_lr: float = 0.0  # the lr the last step used (group 0)
    started: float = field(default_factory=time.perf_counter)
    last_train: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def train_step(self, it: Iterator[Any]) -> tuple[dict[str, torch.Tensor], int]:
        """One optimizer step over `grad_accum` micro-batches; returns mean losses and local samples."""
        accum, n = self.config.grad_accum, 0
        totals: dict[str, torch.Tensor] = {}
        autocast = _autocast(self.config.precision, self.device)
        for micro in range(accum):
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(
                    "batches ran out; fit needs an endless iterable such as Batches(ResumableSampler(...))"
                ) from None
            n += count_samples(batch)
            batch = move_to_device(batch, self.device)
            last = micro == accum - 1
            with _grad_sync(self.model, last):
                with autocast:
                    loss, extra = _split_loss(self.loss_fn(self.model, batch))
                (loss / accum).backward()
            for k, v in {"loss": loss, **extra}.items():
                v = v.detach().float() / accum
                totals[k] = totals[k] + v if k in totals else v
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad or math.inf)
        totals["grad_norm"] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return totals, n

    def log_train(self, totals: dict[str, torch.Tensor], samples: int, seconds: float, bar: tqdm) -> None:
        keys = sorted(totals)
        values = mean_across_ranks(torch.stack([totals[k].to(self.device, torch.float32) for k in keys]))
        # lr is the same on every rank and kept a Python float: a float32 tensor would round it.
        record = {**dict(zip(keys, values.tolist())), "lr": self.step_lr}
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss is {record['loss']} at step {self.step}")
        record["samples/s"] = samples * self.world / max(seconds, 1e-9)
        self.last_train = record
        self.write_metrics({"step": self.step, **record, "elapsed": self.elapsed})
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def evaluate(self, bar: tqdm) -> None:
        assert self.eval_fn is not None
        module = unwrap(self.model)
        was_training = module.training
        module.eval()
        with torch.no_grad(), _autocast(self.config.precision, self.device):
            out = self.eval_fn(module)
        module.train(was_training)
        if not isinstance(out, Mapping):
            raise TypeError(f"eval_fn must return a dict of floats, got {type(out).__name__}")
        self.last_eval = {f"eval/{k}": float(v) for k, v in out.items()}
        self.write_metrics({"step": self.step, **self.last_eval, "elapsed": self.elapsed})
        if self.rank == 0 and self.config.progress:
            bar.write(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in self.last_eval.items()))
        self.plot()

    def write_metrics(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if self.rank != 0 or not (self.out_dir / METRICS_FILE).exists():
            return
        try:
            from speechllm.training.plots import plot_curves

            plot_curves(self.out_dir / METRICS_FILE, self.out_dir / CURVES_FILE)
        except ImportError as e:  # matplotlib is in the `train` extra; curves are a convenience
            log.warning("no %s: %s (pip install matplotlib)", CURVES_FILE, e)

    def save(self) -> None:
        barrier()
        weights, optim_state = ckpt.gather_training_state(self.model, self.optimizer)
        rngs = all_gather_object(ckpt.rng_state())
        if self.rank == 0:
            bad = [n for n, t in weights.items() if not torch.isfinite(t).all()]
            if bad:
                raise FloatingPointError(f"non-finite trainable weights at step {self.step}: {bad[:5]}; not saved")
            state = {
                "step": self.step,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "batches": self.batches.state_dict() if isinstance(self.batches, Stateful) else None,
                "rng": rngs,
                "elapsed": self.elapsed,
                "world_size": self.world,
                "config": dataclasses.asdict(self.config),
            }
            ckpt.save_checkpoint(self.out_dir, self.step, weights, state, self.config.keep_last)
        barrier()

    def resume(self) -> None:
        path = ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            log.warning("resume=True but %s holds no checkpoint; starting at step 0", self.out_dir)
            return
        weights, state = ckpt.load_checkpoint(path)
        ckpt.restore_training_state(self.model, self.optimizer, weights, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["batches"] is not None:
            if not isinstance(self.batches, Stateful):
                raise TypeError(
                    f"{path} holds a data position but batches ({type(self.batches).__name__}) has no load_state_dict"
                )
            self.batches.load_state_dict(state["batches"])
        self.step, self.elapsed_before = int(state["step"]), float(state["elapsed"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.rank % len(rngs)])  # last: nothing above may draw from the RNGs
        if self.rank == 0:
            _truncate_metrics(self.out_dir / METRICS_FILE, self.step)
            log.info("resumed from %s at step %d", path, self.step)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint, so the curves do not fork."""
    if not path.exists():
        return
    from speechllm.training.plots import read_metrics

    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    with atomic_write(path, durable=True) as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept))


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Any,
    config: LoopConfig,
    *,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
    param_groups: list[dict] | None = None,
) -> dict[str, float]:
    """Train `model`'s trainable parameters for `config.max_steps` optimizer steps.

    `batches`: an endless iterable; its items go to `loss_fn(model, batch)` after their tensors are
    moved to the device. Under DDP `loss_fn` gets the wrapper: call the model (its forward), and
    reach other methods or attributes through `unwrap(model)`. For exact resume, `batches` needs
    `state_dict`/`load_state_dict` (as `Batches` and `ResumableSampler` have).
    `eval_fn(model)` runs on every rank under no_grad in eval mode; rank 0's dict is logged.
    `param_groups`: torch-style groups (`{"params": [tensors or names], "lr": ...}`) over trainable
    parameters; the rest train with the config's options. Returns the last train and eval metrics.
    """
    rank, world = rank_and_world()
    device = default_device(local_rank()) if config.device == "auto" else torch.device(config.device)
    out_dir = Path(config.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(out_dir)
    groups = _named_groups(model, param_groups)
    ckpt.seed_everything(config.seed + rank)
    model.to(device)
    wrapped = wrap_model(
        model,
        device,
        fsdp=config.fsdp,
        fsdp_units=config.fsdp_units,
        bf16_params=_uses_bf16(config.precision, device),
        find_unused_parameters=config.find_unused_parameters,
    )
    optimizer = _optimizer(unwrap(wrapped), groups, config)
    schedule = (config.warmup_steps, config.max_steps, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, *schedule))
    run = _Run(wrapped, loss_fn, batches, config, eval_fn, device, optimizer, scheduler, rank, world)
    if resume:
        run.resume()
    _train(run)
    return {"step": float(run.step), **run.last_train, **run.last_eval}


def _train(run: _Run) -> None:
    config, start = run.config, run.step
    bar = tqdm(total=config.max_steps, initial=start, desc="train", disable=run.rank != 0 or not config.progress)
    it = iter(run.batches)
    run.model.train()
    saved = evaluated = start
    window_samples, window_start = 0, time.perf_counter()
    try:
        while run.step < config.max_steps:
            totals, n = run.train_step(it)
            window_samples += n
            bar.update(1)
            if run.step % config.log_every == 0 or run.step == config.max_steps:
                run.log_train(totals, window_samples, time.perf_counter() - window_start, bar)
                window_samples, window_start = 0, time.perf_counter()
            if run.eval_fn is not None and config.eval_every and run.step % config.eval_every == 0:
                run.evaluate(bar)
                evaluated = run.step
            if config.save_every and run.step % config.save_every == 0:
                run.save()
                saved = run.step
        if run.eval_fn is not None and config.eval_every and evaluated != run.step:
            run.evaluate(bar)
        if saved != run.step:
            run.save()
        run.plot()
    finally:
        bar.close()
