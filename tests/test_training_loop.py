"""The generic training loop on a toy regression: accumulation, schedule, freezing, exact resume,
crash-safe checkpoints, metrics and curves, sampler behaviour, config checks. CPU, a few seconds."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechllm.training import checkpoint as ckpt
from speechllm.training.loop import Batches, LoopConfig, ResumableSampler, fit, lr_factor


class Toy(nn.Module):
    """A frozen input projection, then a small trainable MLP with dropout (so resume must restore RNGs)."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.frozen = nn.Linear(4, 8).requires_grad_(False)
        self.hidden = nn.Linear(8, 16)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, 4 -> B, 1
        return self.head(self.drop(torch.tanh(self.hidden(torch.tanh(self.frozen(x))))))


def build(dropout: float = 0.1) -> Toy:
    torch.manual_seed(0)
    return Toy(dropout)


def dataset(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([[0.5], [-1.0], [0.25], [0.75]])  # N, 4 and N, 1


def batches(n: int = 40, batch_size: int = 4, shuffle: bool = True, noise: float = 0.0) -> Batches:
    x, y = dataset(n)

    def make(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # np.random noise stands in for data augmentation: resume must restore NumPy's RNG too.
        jitter = torch.from_numpy(np.random.randn(len(idx), 4).astype(np.float32)) * noise
        return x[idx] + jitter, y[idx]

    return Batches(ResumableSampler(n, batch_size, seed=3, shuffle=shuffle, rank=0, world_size=1), make)


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = batch
    pred = model(x)
    return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean()}


def cfg(tmp_path: Path, **kw) -> LoopConfig:
    base = dict(out_dir=str(tmp_path), max_steps=12, lr=1e-2, warmup_steps=2, save_every=4, eval_every=0)
    return LoopConfig(**{**base, "log_every": 2, "progress": False, **kw})


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_writes_metrics_and_curves(tmp_path: Path) -> None:
    model = build(dropout=0.0)
    x, y = dataset()

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"mse": F.mse_loss(m(x), y).item()}

    out = fit(model, mse, batches(), cfg(tmp_path, max_steps=60, lr=3e-2, eval_every=20, log_every=5), eval_fn=evaluate)
    recs = records(tmp_path)
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval/mse" in r]
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert {"step", "loss", "mae", "lr", "grad_norm", "samples/s", "elapsed"} <= set(train[0])
    assert evals[-1]["eval/mse"] < 0.3 * evals[0]["eval/mse"]
    assert np.mean([r["loss"] for r in train[-3:]]) < 0.3 * np.mean([r["loss"] for r in train[:3]])
    assert out["step"] == 60 and out["eval/mse"] == evals[-1]["eval/mse"]
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_accum_equals_one_big_batch(tmp_path: Path) -> None:
    a, b = build(dropout=0.0), build(dropout=0.0)
    fit(a, mse, batches(batch_size=4, shuffle=False), cfg(tmp_path / "a", max_steps=3, grad_accum=2))
    fit(b, mse, batches(batch_size=8, shuffle=False), cfg(tmp_path / "b", max_steps=3, grad_accum=1))
    for name, p in trainable(a).items():
        torch.testing.assert_close(p, trainable(b)[name], atol=1e-6, rtol=0)
    assert not torch.equal(trainable(a)["head.weight"], trainable(build())["head.weight"])


def test_only_trainable_parameters_change_and_are_saved(tmp_path: Path) -> None:
    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, mse, batches(), cfg(tmp_path, max_steps=4))
    after = dict(model.named_parameters())
    assert torch.equal(after["frozen.weight"], before["frozen.weight"])
    assert torch.equal(after["frozen.bias"], before["frozen.bias"])
    assert all(not torch.equal(after[n], before[n]) for n in trainable(model))
    weights, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert set(weights) == {"hidden.weight", "hidden.bias", "head.weight", "head.bias"}
    assert state["step"] == 4


def test_param_groups_set_their_own_lr(tmp_path: Path) -> None:
    model = build()
    groups = [{"params": list(model.head.parameters()), "lr": 1e-1}]
    fit(model, mse, batches(), cfg(tmp_path, max_steps=4, warmup_steps=0, min_lr_ratio=1.0), param_groups=groups)
    _, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    lrs = {tuple(g["params"]): g["lr"] for g in state["optimizer"]["param_groups"]}
    assert lrs == {("head.weight", "head.bias"): 1e-1, ("hidden.weight", "hidden.bias"): 1e-2}
    with pytest.raises(ValueError, match=r"not in the model"):
        fit(build(), mse, batches(), cfg(tmp_path / "x"), param_groups=[{"params": [build().frozen.weight]}])
    frozen = build()
    with pytest.raises(ValueError, match=r"param_groups\[0\].*frozen\.weight"):
        fit(frozen, mse, batches(), cfg(tmp_path / "y"), param_groups=[{"params": [frozen.frozen.weight]}])


def test_lr_schedule_warmup_then_cosine(tmp_path: Path) -> None:
    f = [lr_factor(s, warmup_steps=10, max_steps=100, min_lr_ratio=0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)
    assert f[54] == pytest.approx(0.55)  # halfway through the cosine
    assert f[99] == pytest.approx(0.1)  # the last step uses lr * min_lr_ratio
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    # The loop logs the lr each step used.
    fit(build(), mse, batches(), cfg(tmp_path, max_steps=10, warmup_steps=4, log_every=1, lr=1.0, min_lr_ratio=0.0))
    logged = [r["lr"] for r in records(tmp_path)]
    expected = [lr_factor(s, 4, 10, 0.0) for s in range(10)]
    assert logged == pytest.approx(expected, abs=1e-12)
    assert logged[3] == pytest.approx(1.0) and logged[-1] == pytest.approx(0.0)


class Crash(Exception):
    pass


def crashing(after_calls: int):
    calls = 0

    def loss_fn(model: nn.Module, batch) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls > after_calls:
            raise Crash
        return mse(model, batch)

    return loss_fn


def test_resume_is_bit_identical_to_a_straight_run(tmp_path: Path) -> None:
    kw = dict(max_steps=12, grad_accum=2, save_every=4)
    straight = build()
    fit(straight, mse, batches(noise=0.1), cfg(tmp_path / "straight", **kw))

    out = tmp_path / "resumed"
    with pytest.raises(Crash):  # killed during step 7: steps 5-6 were done but never saved
        fit(build(), crashing(after_calls=2 * 6 + 1), batches(noise=0.1), cfg(out, **kw))
    assert ckpt.latest_checkpoint(out).name == "step-0000004"
    resumed = build()
    result = fit(resumed, mse, batches(noise=0.1), cfg(out, **kw), resume=True)

    assert result["step"] == 12
    for name, p in trainable(straight).items():
        assert torch.equal(p, trainable(resumed)[name]), name
    train_steps = [r["step"] for r in records(out)]
    assert train_steps == [2, 4, 6, 8, 10, 12]  # the unsaved records of the killed run were dropped
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-0000008", "step-0000012"]


def test_crash_inside_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_save_file = ckpt.save_file
    saves = 0

    def failing_save_file(tensors, filename, metadata=None):
        nonlocal saves
        saves += 1
        if saves == 1:
            return real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        fit(build(), mse, batches(), cfg(tmp_path, max_steps=8, save_every=4))
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-0000004"
    assert not (root / "step-0000008").exists()
    # What a SIGKILL during a save would leave: a temporary directory that resume must ignore.
    (root / ".tmp-step-0000008-abc").mkdir()
    (root / ".tmp-step-0000008-abc" / "state.pt").write_bytes(b"junk")
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-0000004"

    monkeypatch.setattr(ckpt, "save_file", real_save_file)
    resumed = build()
    assert fit(resumed, mse, batches(), cfg(tmp_path, max_steps=8, save_every=4), resume=True)["step"] == 8
    straight = build()
    fit(straight, mse, batches(), cfg(tmp_path / "straight", max_steps=8, save_every=4))
    assert all(torch.equal(p, trainable(resumed)[n]) for n, p in trainable(straight).items())
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000004", "step-0000008"]


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    assert fit(build(), mse, batches(), cfg(tmp_path, max_steps=2), resume=True)["step"] == 2


def test_sampler_resumes_mid_epoch_and_is_deterministic() -> None:
    def take(sampler: ResumableSampler, n: int) -> list[list[int]]:
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(ResumableSampler(10, 3, seed=5), 12)  # 4 batches per epoch (last one short), 3 epochs
    assert [len(b) for b in full[:4]] == [3, 3, 3, 1]
    assert sorted(i for b in full[:4] for i in b) == list(range(10))
    assert full[:4] != full[4:8]  # each epoch is reshuffled
    first = ResumableSampler(10, 3, seed=5)
    take(first, 6)
    second = ResumableSampler(10, 3, seed=5)
    second.load_state_dict(first.state_dict())
    assert take(second, 6) == full[6:]
    with pytest.raises(ValueError, match="batch_size=3, this sampler has 4"):
        ResumableSampler(10, 4, seed=5).load_state_dict(first.state_dict())
    assert [len(b) for b in take(ResumableSampler(10, 3, drop_last=True), 3)] == [3, 3, 3]


def test_sampler_shards_global_batches_over_ranks() -> None:
    ranks = [iter(ResumableSampler(10, 4, seed=1, rank=r, world_size=2)) for r in range(2)]
    glob = ResumableSampler(10, 4, seed=1, rank=0, world_size=1).epoch_batches(0)
    for batch in glob:
        shards = [next(r) for r in ranks]
        padded = batch + [i for i in glob[0][: -len(batch) % 2]]
        assert sorted(shards[0] + shards[1]) == sorted(padded)
        assert len(shards[0]) == len(shards[1])
    with pytest.raises(ValueError, match="batch_size must divide by world_size"):
        ResumableSampler(10, 3, rank=0, world_size=2)


def test_sampler_buckets_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=400).tolist()
    bucketed = ResumableSampler(400, 8, seed=0, bucket_by=lengths, bucket_batches=10)
    plain = ResumableSampler(400, 8, seed=0)

    def spread(s: ResumableSampler) -> float:
        return float(np.mean([np.ptp([lengths[i] for i in b]) for b in s.epoch_batches(0)]))

    assert spread(bucketed) < 0.2 * spread(plain)
    assert sorted(i for b in bucketed.epoch_batches(0) for i in b) == list(range(400))
    assert bucketed.epoch_batches(1) == ResumableSampler(400, 8, bucket_by=lengths, bucket_batches=10).epoch_batches(1)
    assert bucketed.epoch_batches(0) != bucketed.epoch_batches(1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_steps", 0),
        ("grad_accum", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("weight_decay", -0.1),
        ("warmup_steps", -1),
        ("warmup_steps", 5000),
        ("min_lr_ratio", 1.5),
        ("betas", (0.9, 1.0)),
        ("clip_grad", 0.0),
        ("eval_every", -1),
        ("save_every", -5),
        ("log_every", 0),
        ("precision", "fp16"),
        ("keep_last", 0),
    ],
)
def test_bad_config_names_field_and_value(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"LoopConfig\.{field} .*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        LoopConfig(out_dir=str(tmp_path), **{field: value})


def test_fsdp_on_cpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"fsdp=True needs CUDA"):
        fit(build(), mse, batches(), cfg(tmp_path, fsdp=True))


def test_non_finite_loss_stops_the_run(tmp_path: Path) -> None:
    def nan_loss(model: nn.Module, batch) -> torch.Tensor:
        return mse(model, batch)["loss"] * math.nan

    with pytest.raises(FloatingPointError, match="at step 2"):
        fit(build(), nan_loss, batches(), cfg(tmp_path))
