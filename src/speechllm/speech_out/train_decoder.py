"""Train the speech decoder with the LLM frozen: (text answer, units of that answer spoken by TTS).

The LLM reads each conversation with its answer once (teacher forcing) and we keep, for every
answer token, the last-layer state that predicted it and the token's input embedding: exactly
what `stream_generate(on_hidden=...)` hands the decoder at inference. These are cached on disk
(fp16) so that training touches only the small decoder. Targets are the deduplicated units of the
TTS audio of the answer (`speechllm units extract`). Loss: CTC; evaluation: unit error rate.

    speechllm speech train-decoder --units data_out/speech/train_units.jsonl \\
        --dev-units data_out/speech/test_units.jsonl --out runs/speech/decoder
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from speechllm.data.builders import read_questions, shipped_text
from speechllm.data.manifest import Sample, read_manifest
from speechllm.model.speech_llm import SpeechLLM
from speechllm.speech_out.config import SpeechDecoderConfig
from speechllm.speech_out.decoder import SpeechDecoder, suggested_upsample, units_per_token
from speechllm.speech_out.units import dedup
from speechllm.training.loop import Batches, LoopConfig, ResumableSampler, fit

SAY_PROMPT = "Say something."
"""User turn for a training text that answers no known question (a plain sentence)."""


def prompts_from_questions(path: str | Path | None = None) -> dict[str, str]:
    """Answer text -> the question it answers (the shipped questions.jsonl by default)."""
    questions = read_questions(path or shipped_text("questions.jsonl"))
    return {q.answer: q.question for q in questions if q.answer}


@torch.no_grad()
def answer_states(
    model: SpeechLLM, prompts: list[str], answers: list[str], *, batch_size: int = 16, progress: bool = True
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """For each (prompt, answer): (hidden (N, D) fp16, tokens (N,), embeds (N, D) fp16) over the N
    answer tokens before the end of the turn; hidden[i] is the state that predicted tokens[i]."""
    from speechllm.inference.generation import eos_token_ids

    eos = eos_token_ids(model)
    pad = model.processor.tokenizer.pad_token_id or 0
    table = model.llm.get_input_embeddings()
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in tqdm(range(0, len(answers), batch_size), desc="LLM states", disable=not progress):
        rendered = [
            model.processor.render([{"role": "user", "content": p}], a)
            for p, a in zip(prompts[start : start + batch_size], answers[start : start + batch_size], strict=True)
        ]
        width = max(len(r.input_ids) for r in rendered)
        ids = torch.full((len(rendered), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rendered):
            ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
            mask[i, : len(r.input_ids)] = 1
        # The body without the LM head: its last state (after the final norm) is hidden_states[-1] of the full
        # model, and skipping the vocabulary projection of every position makes this several times faster.
        hidden = model.llm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # B, L, D
        for i, r in enumerate(rendered):
            answer = r.input_ids[r.prompt_length :]
            n = next((j for j, t in enumerate(answer) if t in eos), len(answer))
            tokens = torch.tensor(answer[:n], dtype=torch.long)
            # The state at position p predicts the token at p + 1.
            h = hidden[i, r.prompt_length - 1 : r.prompt_length - 1 + n]
            out.append((h.to(torch.float16), tokens, table(tokens).to(torch.float16)))
    return out


class StateCache:
    """The LLM states of a units manifest, computed once and kept in one safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load_or_build(self, model: SpeechLLM, samples: list[Sample], prompts: dict[str, str]) -> list[dict[str, Any]]:
        ids = [s.id for s in samples]
        if self.path.is_file():
            stored = load_file(str(self.path))
            if all(f"{i}.hidden" in stored for i in ids):
                return [self._item(stored, s) for s in samples]
        states = answer_states(model, [prompts.get(s.target, SAY_PROMPT) for s in samples], [s.target for s in samples])
        tensors: dict[str, Tensor] = {}
        for s, (h, t, e) in zip(samples, states, strict=True):
            tensors[f"{s.id}.hidden"], tensors[f"{s.id}.tokens"], tensors[f"{s.id}.embeds"] = h, t, e
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(self.path)
        return [self._item(tensors, s) for s in samples]

    @staticmethod
    def _item(stored: dict[str, Tensor], s: Sample) -> dict[str, Any]:
        if s.units is None:
            raise ValueError(f"sample {s.id} has no units: run `speechllm units extract` on its manifest first")
        return {
            "id": s.id,
            "hidden": stored[f"{s.id}.hidden"],
            "tokens": stored[f"{s.id}.tokens"],
            "embeds": stored[f"{s.id}.embeds"],
            "units": dedup(s.units)[0],
        }


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
    return float(jiwer.wer(refs, hyps))


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

    model = load_model(args.model).eval()
    prompts = prompts_from_questions(args.questions)
    out = Path(args.out)
    train_samples = read_manifest(args.units)
    num_units = int(args.num_units or 1 + max(u for s in train_samples for u in (s.units or [0])))
    items = StateCache(out / "states_train.safetensors").load_or_build(model, train_samples, prompts)
    dev: list[dict[str, Any]] = []
    if args.dev_units:
        dev_samples = read_manifest(args.dev_units)[: args.dev_size]
        dev = StateCache(out / "states_dev.safetensors").load_or_build(model, dev_samples, prompts)
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
        save_every=args.eval_every,
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
    p.add_argument("--units", required=True, help="units manifest of the answers (speechllm units extract)")
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
    p.add_argument("--resume", action="store_true")
