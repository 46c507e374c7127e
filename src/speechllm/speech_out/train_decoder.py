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
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from speechllm.data.manifest import read_manifest
from speechllm.eval.metrics import wer
from speechllm.model.ctc import run_lengths
from speechllm.speech_out.answers import SAY_PROMPT, Answer, StateCache, prompts_from_questions, read_answers
from speechllm.speech_out.config import SpeechDecoderConfig
from speechllm.speech_out.decoder import SpeechDecoder, suggested_upsample, units_per_token
from speechllm.training.loop import Batches, LoopConfig, ResumableSampler, fit


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
        raise ValueError(f"no answer carries at most {upsample} units per token; raise --upsample")
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


def train(args: argparse.Namespace) -> dict[str, float]:
    from speechllm.defaults import load_model

    if (args.units is None) == (args.answers is None):
        raise ValueError("give exactly one of --units (k-means units manifest) and --answers (phoneme targets)")
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    prompts = prompts_from_questions(args.questions)
    out = Path(args.out)
    kind, train_path = ("phonemes", args.answers) if args.answers else ("kmeans", args.units)
    items = load_items(model, train_path, kind, out / "states_train.safetensors", prompts)
    dev: list[dict[str, Any]] = []
    dev_path = args.dev_answers if kind == "phonemes" else args.dev_units
    if dev_path:
        dev = load_items(model, dev_path, kind, out / "states_dev.safetensors", prompts)[: args.dev_size]
    if args.num_units:
        num_units = int(args.num_units)
    elif kind == "phonemes":
        from speechllm.speech_out.phonemes import PhonemeInventory

        num_units = PhonemeInventory.from_voice_config().num_symbols
    else:
        num_units = 1 + max(u for it in items for u in it["units"])
    config = SpeechDecoderConfig(
        llm_dim=model.llm.config.hidden_size,
        num_units=num_units,
        upsample=args.upsample,
        layers=args.layers,
        dim=args.dim,
        heads=args.heads,
        ffn_dim=4 * args.dim,
        window=args.window,
    )
    if args.drop_over_upsample:
        items = drop_over_upsample(items, config.upsample)
    mean_ratio = check_upsample(items, config.upsample)
    print(f"{len(items)} answers, {mean_ratio:.2f} units per token on average, upsample {config.upsample}")
    decoder = SpeechDecoder(config)
    sampler = ResumableSampler(len(items), args.batch_size, seed=0, bucket_by=[it["hidden"].shape[0] for it in items])
    batches = Batches(sampler, lambda idx: collate([items[i] for i in idx]))
    loop = LoopConfig(
        out_dir=str(out),
        max_steps=args.steps,
        lr=args.lr,
        warmup_steps=min(100, args.steps // 10),
        eval_every=args.eval_every if dev else 0,
        save_every=args.save_every or args.eval_every,
        weight_decay=0.01,
    )

    def evaluate(m: nn.Module) -> dict[str, float]:
        decoder = m.decoder
        assert isinstance(decoder, SpeechDecoder)
        return {"unit_error_rate": unit_error_rate(decoder, dev)}

    metrics = fit(
        DecoderObjective(decoder),
        lambda m, b: m(b),
        batches,
        loop,
        eval_fn=evaluate if dev else None,
        resume=args.resume,
    )
    decoder.eval().save(out / "model")
    print(f"speech decoder saved to {out / 'model'}: {metrics}")
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SpeechDecoderConfig()
    p.add_argument("--answers", nargs="+", help="answers JSONL files (id, question, answer): phoneme targets, no audio")
    p.add_argument("--dev-answers", nargs="+", help="held-out answers JSONL: phoneme error rate during training")
    p.add_argument("--units", help="units manifest of TTS answers (speechllm units extract): k-means targets")
    p.add_argument("--dev-units", help="held-out units manifest: unit error rate during training")
    p.add_argument("--dev-size", type=int, default=100)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", help="speech LLM directory whose LLM states are read (default: the embedded default)")
    p.add_argument("--questions", help="questions JSONL giving the prompt of each answer (default: shipped)")
    p.add_argument("--num-units", type=int, help="unit vocabulary K (default: from the data)")
    p.add_argument("--upsample", type=int, default=d.upsample)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument(
        "--drop-over-upsample",
        action="store_true",
        help="leave out answers with more units per token than --upsample (default: refuse to train)",
    )
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (default: --eval-every)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--resume", action="store_true")
