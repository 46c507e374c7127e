"""The LLM's states over its answers: what the speech decoder reads, for training and evaluation.

The LLM reads each conversation with its answer once (teacher forcing) and we keep, for every
answer token, the last-layer state that predicted it and the token's input embedding: exactly
what `stream_generate(on_hidden=...)` hands the speech decoder at inference. `StateCache` keeps
them on disk (fp16) so that training touches only the small decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from speechllm.data.builders import read_questions, shipped_text
from speechllm.model.speech_llm import SpeechLLM

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
    # Batches of similar lengths waste little on padding; the results come back in the given order.
    order = sorted(range(len(answers)), key=lambda i: len(prompts[i]) + len(answers[i]))
    for start in tqdm(range(0, len(answers), batch_size), desc="LLM states", disable=not progress):
        rows = order[start : start + batch_size]
        rendered = [model.processor.render([{"role": "user", "content": prompts[i]}], answers[i]) for i in rows]
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
    where = {row: k for k, row in enumerate(order)}
    return [out[where[i]] for i in range(len(answers))]


@dataclass(frozen=True)
class Answer:
    """One answer to voice: its id, the user turn it answers, and its text."""

    id: str
    prompt: str
    text: str


def read_answers(path: str | Path) -> list[Answer]:
    """JSONL with "id", "question" and "answer" (recipes/default_speech_answers.py writes it)."""
    answers = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if not isinstance(rec, dict) or not {"id", "question", "answer"} <= rec.keys():
            raise ValueError(f"{path}:{lineno}: expected an object with id, question and answer, got {line[:80]!r}")
        if str(rec["answer"]).strip():
            answers.append(Answer(str(rec["id"]), str(rec["question"]), str(rec["answer"]).strip()))
    if not answers:
        raise ValueError(f"{path}: holds no non-empty answer")
    return answers


class StateCache:
    """The LLM states of a list of answers, computed once and kept in one safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load_or_build(self, model: SpeechLLM, answers: list[Answer]) -> list[dict[str, Any]]:
        """One dict per answer: id, text, hidden (N, D) fp16, tokens (N,), embeds (N, D) fp16."""
        if self.path.is_file():
            stored = load_file(str(self.path))
            if all(f"{a.id}.hidden" in stored for a in answers):
                return [self._item(stored, a) for a in answers]
        states = answer_states(model, [a.prompt for a in answers], [a.text for a in answers])
        tensors: dict[str, Tensor] = {}
        for a, (h, t, e) in zip(answers, states, strict=True):
            tensors[f"{a.id}.hidden"], tensors[f"{a.id}.tokens"], tensors[f"{a.id}.embeds"] = h, t, e
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(self.path)
        return [self._item(tensors, a) for a in answers]

    @staticmethod
    def _item(stored: dict[str, Tensor], a: Answer) -> dict[str, Any]:
        return {
            "id": a.id,
            "text": a.text,
            "hidden": stored[f"{a.id}.hidden"],
            "tokens": stored[f"{a.id}.tokens"],
            "embeds": stored[f"{a.id}.embeds"],
        }
