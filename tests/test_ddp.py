"""Two CPU processes (gloo) train a toy MLP with some frozen weights through `fit`: both ranks must
end with the same weights, different from the start, and a resumed DDP run must agree too."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))
    model[0].bias.requires_grad_(False)
    return model


def _worker(rank: int, port: int, out_dir: str) -> None:
    # Imports inside: the spawned process re-imports this module by name.
    from speechllm.training import cleanup_distributed, setup_distributed
    from speechllm.training.loop import Batches, LoopConfig, ResumableSampler, fit

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    got_rank, world, device = setup_distributed()
    assert (got_rank, world, device.type) == (rank, WORLD, "cpu")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[0.5], [-1.0], [0.25], [0.75]])  # N, 1

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(model(batch[0]), batch[1])

    def run(max_steps: int, resume: bool) -> nn.Module:
        model = _build()
        sampler = ResumableSampler(64, 8, seed=2)  # rank and world size from the process group
        batches = Batches(sampler, lambda idx: (x[idx], y[idx]))
        config = LoopConfig(
            out_dir=out_dir, max_steps=max_steps, grad_accum=2, lr=1e-2, warmup_steps=1, save_every=2, log_every=1
        )
        fit(model, loss_fn, batches, config, resume=resume, param_groups=[{"params": [model[3].weight], "lr": 3e-2}])
        return model

    first = run(4, resume=False)
    torch.save(first.state_dict(), Path(out_dir) / f"first-rank{rank}.pt")
    second = run(6, resume=True)  # continues from step 4 under DDP
    torch.save(second.state_dict(), Path(out_dir) / f"second-rank{rank}.pt")
    cleanup_distributed()


def test_two_cpu_ranks_train_in_lockstep(tmp_path: Path) -> None:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 90 s")

    start = _build().state_dict()
    for stage in ("first", "second"):
        r0, r1 = (torch.load(tmp_path / f"{stage}-rank{r}.pt") for r in range(WORLD))
        for name in start:
            assert torch.equal(r0[name], r1[name]), f"{stage}: ranks disagree on {name}"
        assert torch.equal(r0["0.bias"], start["0.bias"])  # frozen
        assert not torch.equal(r0["0.weight"], start["0.weight"])
        assert not torch.equal(r0["3.weight"], start["3.weight"])
    assert not torch.equal(r0["3.weight"], torch.load(tmp_path / "first-rank0.pt")["3.weight"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # rank 0 alone wrote one record per step (log_every=1)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    assert (tmp_path / "curves.png").exists()
