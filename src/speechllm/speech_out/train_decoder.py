"""Train the speech decoder with the LLM frozen, on the LLM's states over answers (speechllm.speech_out.answers).

Two kinds of targets (`SpeechDecoderConfig` is the same for both; only K differs):
- `--answers A.jsonl` (phoneme units): the answers' text phonemized for the Piper voice
  (speechllm.speech_out.phonemes); no audio. With recipes/default_speech_answers.py the answers
  are the LLM's own, greedy, as it will voice them;
- `--units M_units.jsonl` (k-means units): the deduplicated units of TTS recordings of each answer
  (`speechllm units extract`).
Loss: CTC; held-out figure: unit (phoneme) error rate of greedy CTC.

    speechllm speech train-decoder --answers data_out/speech_phonemes/answers/train.jsonl \
        --dev-answers data_out/speech_phonemes/answers/test.jsonl --out runs/speech/phoneme_decoder

From Python: `train(DecoderTrainConfig(answers=[...], loop=LoopConfig(out_dir=...)))`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from speechllm.config import save_config
from speechllm.data.manifest import read_manifest
from speechllm.eval.metrics import wer
from speechllm.model.ctc import run_lengths
from speechllm.speech_out.answers import SAY_PROMPT, Answer, StateCache, prompts_from_questions, read_answers
from speechllm.speech_out.config import SpeechDecoderConfig
from speechllm.speech_out.decoder import SpeechDecoder, suggested_upsample, units_per_token
from speechllm.speech_out.train_config import DecoderTrainConfig
from speechllm.training.loop import Batches, ResumableSampler, fit


def units_targets(path: str | Path, prompts: dict[str, str]) -> tuple[list[Answer], list[list[int]]]:
    """A units manifest -> its answers and their deduplicated k-means units."""
    samples = read_manifest(path)
    missing = [s.id for s in samples if not s.units]
    if missing:
        raise ValueError(f"{path}: sample {missing[0]} has no units: run `speechllm units extract` on it first")
    answers = [Answer(s.id, prompts.get(s.target, SAY_PROMPT), s.target) for s in samples]
    return answers, [run_lengths(s.units or [])[0] for s in samples]


def phoneme_targets(paths: list[str]) -> tuple[list[Answer], list[list[int]]]:
    """Answers JSONL files -> their answers and their phoneme units for the Piper voice."""
    from speechllm.speech_out.phonemes import PhonemeInventory

    inventory = PhonemeInventory.from_voice_config()
    answers = [a for path in paths for a in read_answers(path)]
    return answers, [inventory.encode(a.text) for a in answers]


def load_items(model: Any, path: Any, kind: str, cache: Path, prompts: dict[str, str]) -> list[dict[str, Any]]:
    """LLM states (cached) + targets ("units": list of ids) of each answer with at least one unit."""
    answers, targets = phoneme_targets(path) if kind == "phonemes" else units_targets(path, prompts)
    items = StateCache(cache).load_or_build(model, answers)
    for item, units in zip(items, targets, strict=True):
        item["units"] = units
    return [it for it in items if it["units"] and it["hidden"].shape[0]]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a batch: hidden and embeds (B, N_max, D) float32, lengths (B,), units as lists."""
    lengths = torch.tensor([it["hidden"].shape[0] for it in items])
    hidden = nn.utils.rnn.pad_sequence([it["hidden"].float() for it in items], batch_first=True)
    embeds = nn.utils.rnn.pad_sequence([it["embeds"].float() for it in items], batch_first=True)
    return {"hidden": hidden, "embeds": embeds, "lengths": lengths, "units": [it["units"] for it in items]}


class DecoderObjective(nn.Module):
    """The decoder plus its CTC loss, the module `fit` trains."""

    def __init__(self, decoder: SpeechDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        embeds = batch["embeds"] if self.decoder.config.token_embedding else None
        loss = self.decoder.ctc_loss(batch["hidden"], embeds, batch["lengths"], batch["units"])
        return {"loss": loss, "ctc": loss.detach()}


def unit_error_rate(decoder: SpeechDecoder, items: list[dict[str, Any]]) -> float:
    """Edit distance of greedy CTC units to the target units, over all target units."""
    refs, hyps = [], []
    for it in items:
        embeds = it["embeds"].float() if decoder.config.token_embedding else None
        hyps.append(" ".join(map(str, decoder.decode(it["hidden"].float(), embeds))) or "-")
        refs.append(" ".join(map(str, it["units"])))
    return wer(refs, hyps, normalize=False)


def drop_over_upsample(items: list[dict[str, Any]], upsample: int) -> list[dict[str, Any]]:
    """The answers whose units fit upsample positions per token (the rest cannot be CTC targets)."""
    kept = [it for it in items if units_per_token(it["units"], it["hidden"].shape[0]) <= upsample]
    if len(kept) < len(items):
        print(f"dropped {len(items) - len(kept)} of {len(items)} answers carrying more than {upsample} units per token")
    if not kept:
        raise ValueError(f"no answer carries at most {upsample} units per token; raise upsample (--upsample)")
    return kept


def check_upsample(items: list[dict[str, Any]], upsample: int) -> float:
    """The largest units-per-token ratio of the data; raises if `upsample` cannot fit it."""
    ratios = [units_per_token(it["units"], it["hidden"].shape[0]) for it in items]
    worst = max(ratios)
    if worst > upsample:
        raise ValueError(
            f"an answer carries {worst:.1f} units per token but upsample={upsample}; "
            f"use upsample >= {suggested_upsample(ratios)}"
        )
    return float(np.mean(ratios))


def train(cfg: DecoderTrainConfig, *, resume: bool = False) -> dict[str, float]:
    """Train the speech decoder as `cfg` says; writes the run files and `<loop.out_dir>/model`."""
    from speechllm.defaults import load_model

    torch.set_num_threads(cfg.threads)
    model = load_model(cfg.model).eval()
    prompts = prompts_from_questions(cfg.questions)
    out = Path(cfg.loop.out_dir)
    save_config(cfg, out / "train_config.yaml")
    kind, train_path, dev_path = (
        ("phonemes", cfg.answers, cfg.dev_answers) if cfg.answers else ("kmeans", cfg.units, cfg.dev_units)
    )
    items = load_items(model, train_path, kind, out / "states_train.safetensors", prompts)
    dev: list[dict[str, Any]] = []
    if dev_path:
        dev = load_items(model, dev_path, kind, out / "states_dev.safetensors", prompts)[: cfg.dev_size]
    config = SpeechDecoderConfig(
        llm_dim=model.llm.config.hidden_size,
        num_units=cfg.num_units or _num_units(kind, items),
        upsample=cfg.upsample,
        layers=cfg.layers,
        dim=cfg.dim,
        heads=cfg.heads,
        ffn_dim=4 * cfg.dim,
        window=cfg.window,
    )
    if cfg.drop_over_upsample:
        items = drop_over_upsample(items, config.upsample)
    mean_ratio = check_upsample(items, config.upsample)
    print(f"{len(items)} answers, {mean_ratio:.2f} units per token on average, upsample {config.upsample}")
    decoder = SpeechDecoder(config)
    sampler = ResumableSampler(
        len(items), cfg.batch_size, seed=cfg.loop.seed, bucket_by=[it["hidden"].shape[0] for it in items]
    )
    batches = Batches(sampler, lambda idx: collate([items[i] for i in idx]))

    def evaluate(m: nn.Module) -> dict[str, float]:
        decoder = m.decoder
        assert isinstance(decoder, SpeechDecoder)
        return {"unit_error_rate": unit_error_rate(decoder, dev)}

    metrics = fit(
        DecoderObjective(decoder),
        lambda m, b: m(b),
        batches,
        cfg.loop if dev else dataclasses.replace(cfg.loop, eval_every=0),
        eval_fn=evaluate if dev else None,
        resume=resume,
    )
    decoder.eval().save(out / "model")
    print(f"speech decoder saved to {out / 'model'}: {metrics}")
    return metrics


def _num_units(kind: str, items: list[dict[str, Any]]) -> int:
    """The unit vocabulary the data implies: the voice's phonemes, or 1 + the largest k-means unit."""
    if kind == "phonemes":
        from speechllm.speech_out.phonemes import PhonemeInventory

        return PhonemeInventory.from_voice_config().num_symbols
    return 1 + max(u for it in items for u in it["units"])
