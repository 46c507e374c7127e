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
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
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

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
T = TypeVar("T")
LossFn = Callable[[nn.Module, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
EvalFn = Callable[[nn.Module], Mapping[str, float]]


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


# --- data -----------------------------------------------------------------------------------------


class ResumableSampler:
    """Endless batches of dataset indices, epoch after epoch, resumable at any batch.

    `batch_size` is the global batch of one micro-step: with W processes, each rank yields its
    shard `batch[rank::W]` (so it must divide by W, and a short last batch is padded with indices
    from the start of the epoch). Epoch e is a pure function of `(seed, e)`, independent of the
    global RNGs. With `bucket_by` (one length per item) items are sorted by length inside windows
    of `bucket_batches` batches, cut into batches, and the batch order shuffled: batches hold
    similar lengths (less padding) and the epoch stays random.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        *,
        bucket_by: list[int] | None = None,
        bucket_batches: int = 50,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        dist_rank, dist_world = rank_and_world()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        if dataset_len < 1 or batch_size < 1 or bucket_batches < 1:
            raise ValueError(
                f"dataset_len, batch_size and bucket_batches must be >= 1, got {dataset_len}, {batch_size}, "
                f"{bucket_batches}"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if batch_size % self.world_size:
            raise ValueError(f"batch_size must divide by world_size ({self.world_size}), got {batch_size}")
        if drop_last and dataset_len < batch_size:
            raise ValueError(f"drop_last=True with dataset_len {dataset_len} < batch_size {batch_size} yields nothing")
        if bucket_by is not None and len(bucket_by) != dataset_len:
            raise ValueError(f"bucket_by must hold dataset_len ({dataset_len}) lengths, got {len(bucket_by)}")
        self.dataset_len, self.batch_size, self.seed = dataset_len, batch_size, seed
        self.shuffle, self.drop_last, self.bucket_batches = shuffle, drop_last, bucket_batches
        self.lengths = None if bucket_by is None else np.asarray(bucket_by, dtype=np.int64)
        self.epoch = 0
        self.position = 0  # global batches of the current epoch already handed out

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch`, in order (before sharding over ranks)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.dataset_len) if self.shuffle else np.arange(self.dataset_len)
        if self.lengths is not None:
            if self.shuffle:
                window = self.batch_size * self.bucket_batches
                chunks = [order[i : i + window] for i in range(0, len(order), window)]
                order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
            else:
                order = np.argsort(self.lengths, kind="stable")
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [self._pad(b.tolist(), order) for b in batches]

    def _pad(self, batch: list[int], order: np.ndarray) -> list[int]:
        short = -len(batch) % self.world_size
        return batch + [int(i) for i in order[:short]]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1
                yield batch[self.rank :: self.world_size]
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "dataset_len": self.dataset_len,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key in ("seed", "dataset_len", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]}, this sampler has {getattr(self, key)}"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class Batches(Generic[T]):
    """`make_batch(indices)` for every index list of a sampler; resumable through the sampler."""

    def __init__(self, sampler: ResumableSampler, make_batch: Callable[[list[int]], T]) -> None:
        self.sampler, self.make_batch = sampler, make_batch

    def __iter__(self) -> Iterator[T]:
        for indices in self.sampler:
            yield self.make_batch(indices)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.load_state_dict(state)


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
