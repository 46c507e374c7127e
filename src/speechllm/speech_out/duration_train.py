"""`speechllm vocoder train-durations`: give a trained vocoder a new duration predictor.

The duration predictor learns alone (L1 on log run lengths, the term `vocoder train` gives it);
the generator never sees predicted durations in training (it reads the recordings' own frames),
so a predictor can be swapped, e.g. for one that hears `duration_lookahead` units ahead, in
minutes rather than the hours a whole vocoder takes. The result is a complete vocoder folder.

    speechllm vocoder train-durations --model runs/speech/vocoder/model \\
        --units data_out/speech/train_units.jsonl --dev-units data_out/speech/test_units.jsonl \\
        --lookahead 2 --out runs/speech/durations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechllm.speech_out.unit_data import duration_batch, duration_l1, duration_sequences, read_units_manifest
from speechllm.speech_out.vocoder import DurationPredictor, UnitVocoder
from speechllm.training.loop import Batches, LoopConfig, ResumableSampler, fit

Sequences = list[tuple[list[int], list[int]]]


class DurationObjective(nn.Module):
    """The predictor and its masked L1 on log durations, the module `fit` trains."""

    def __init__(self, predictor: DurationPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        loss = duration_l1(self.predictor.predict(batch["units"]), batch)
        return {"loss": loss, "duration": loss.detach()}


@torch.no_grad()
def duration_metrics(predictor: DurationPredictor, sequences: Sequences) -> dict[str, float]:
    """Held-out figures: L1 of log durations, share of units given exactly their frames, and the
    speaking rate (true frames / predicted frames; above 1 = predicted speech is too fast)."""
    batch = duration_batch(sequences, predictor.max_duration)
    mask = batch["unit_mask"]
    log_d = predictor.predict(batch["units"])
    frames = predictor.durations(log_d).float()
    truth = torch.round(batch["log_durations"].exp())
    return {
        "l1": float(duration_l1(log_d, batch)),
        "exact": float(((frames == truth).float() * mask).sum() / mask.sum()),
        "rate": float((truth * mask).sum() / (frames * mask).sum()),
    }


def read_sequences(path: Path, num_units: int) -> Sequences:
    return duration_sequences(read_units_manifest(path, num_units))


def train_durations(args: argparse.Namespace) -> dict[str, Any]:
    vocoder = UnitVocoder.load(args.model)
    config = dataclasses.replace(
        vocoder.config, duration_layers=args.layers, duration_kernel=args.kernel, duration_lookahead=args.lookahead
    )
    train = read_sequences(args.units, config.num_units)
    dev = read_sequences(args.dev_units, config.num_units) if args.dev_units else []
    torch.manual_seed(args.seed)
    out = UnitVocoder(config, generator=vocoder.generator)  # the same generator, a fresh duration predictor
    predictor = out.duration_predictor
    sampler = ResumableSampler(len(train), args.batch_size, seed=args.seed)
    loop = LoopConfig(
        out_dir=str(args.out),
        max_steps=args.steps,
        lr=args.lr,
        warmup_steps=min(100, args.steps // 10),
        weight_decay=0.01,
        eval_every=args.eval_every if dev else 0,
        save_every=args.eval_every,
        seed=args.seed,
        device="cpu",
        progress=not args.quiet,
    )

    def evaluate(model: nn.Module) -> dict[str, float]:
        assert isinstance(model, DurationObjective)
        return duration_metrics(model.predictor, dev)

    batches = Batches(sampler, lambda idx: duration_batch([train[i] for i in idx], config.max_duration))
    metrics = fit(
        DurationObjective(predictor), lambda m, b: m(b), batches, loop,
        eval_fn=evaluate if dev else None, resume=args.resume,
    )  # fmt: skip
    out.eval().save(Path(args.out) / "model")
    summary: dict[str, Any] = {"model": str(Path(args.out) / "model"), **metrics}
    if dev:
        summary["dev_before"] = duration_metrics(vocoder.duration_predictor, dev)
        summary["dev_after"] = duration_metrics(out.duration_predictor, dev)
    print(json.dumps(summary, indent=2))
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="a trained vocoder folder (its generator is kept)")
    p.add_argument("--units", type=Path, required=True, help="units manifest to learn durations from")
    p.add_argument("--dev-units", type=Path, help="held-out units manifest: L1, exact share and rate")
    p.add_argument("--out", type=Path, required=True, help="run directory; the new vocoder goes to <out>/model")
    p.add_argument("--lookahead", type=int, default=2, help="units ahead each duration hears (default 2)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
