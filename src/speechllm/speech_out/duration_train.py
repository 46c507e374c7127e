"""`speechllm vocoder train-durations`: give a trained vocoder a new duration predictor.

The duration predictor learns alone (L1 on log run lengths, the term `vocoder train` gives it);
the generator never sees predicted durations in training (it reads the recordings' own frames),
so a predictor can be swapped, e.g. for one that hears `duration_lookahead` units ahead, in
minutes rather than the hours a whole vocoder takes. The result is a complete vocoder folder.

    speechllm vocoder train-durations --model runs/speech/vocoder/model \\
        --units data_out/speech/train_units.jsonl --dev-units data_out/speech/test_units.jsonl \\
        --lookahead 2 --out runs/speech/durations

From Python: `train_durations(DurationTrainConfig(model=..., units=..., loop=LoopConfig(out_dir=...)))`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechllm.config import save_config
from speechllm.speech_out.train_config import DurationTrainConfig
from speechllm.speech_out.unit_data import duration_batch, duration_l1, duration_sequences, read_units_manifest
from speechllm.speech_out.vocoder import UnitVocoder
from speechllm.speech_out.vocoder_parts import DurationPredictor
from speechllm.training.loop import Batches, ResumableSampler, fit

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


def train_durations(cfg: DurationTrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train a fresh duration predictor for `cfg.model`'s generator; writes `<loop.out_dir>/model`
    (a whole vocoder) and returns the loop's metrics, with held-out figures before and after."""
    vocoder = UnitVocoder.load(cfg.model)
    save_config(cfg, Path(cfg.loop.out_dir) / "train_config.yaml")
    config = dataclasses.replace(
        vocoder.config, duration_layers=cfg.layers, duration_kernel=cfg.kernel, duration_lookahead=cfg.lookahead
    )
    train = read_sequences(Path(cfg.units), config.num_units)
    dev = read_sequences(Path(cfg.dev_units), config.num_units) if cfg.dev_units else []
    torch.manual_seed(cfg.loop.seed)
    out = UnitVocoder(config, generator=vocoder.generator)  # the same generator, a fresh duration predictor
    predictor = out.duration_predictor
    sampler = ResumableSampler(len(train), cfg.batch_size, seed=cfg.loop.seed)

    def evaluate(model: nn.Module) -> dict[str, float]:
        assert isinstance(model, DurationObjective)
        return duration_metrics(model.predictor, dev)

    batches = Batches(sampler, lambda idx: duration_batch([train[i] for i in idx], config.max_duration))
    loop = cfg.loop if dev else dataclasses.replace(cfg.loop, eval_every=0)
    metrics = fit(
        DurationObjective(predictor), lambda m, b: m(b), batches, loop, eval_fn=evaluate if dev else None, resume=resume
    )
    model_dir = Path(cfg.loop.out_dir) / "model"
    out.eval().save(model_dir)
    summary: dict[str, Any] = {"model": str(model_dir), **metrics}
    if dev:
        summary["dev_before"] = duration_metrics(vocoder.duration_predictor, dev)
        summary["dev_after"] = duration_metrics(out.duration_predictor, dev)
    print(json.dumps(summary, indent=2))
    return summary
