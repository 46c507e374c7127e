"""N-best rescoring of the whisper recognizer's hypotheses by the LLM itself.

Whisper's beam finishes several hypotheses that often differ in one word ("the capital of power
juggle" / "the capital of Portugal"). The LLM that will read the transcript knows which of them a
person would type: each hypothesis is scored by the LLM's log-likelihood of it as the user's turn
of its own chat template, and the transcript with the best

    recognizer log-probability + weight * LLM log-probability      (summed over tokens)

is kept: N-best rescoring with an external language model (log-linear, as in shallow fusion after
the beam). The weight (`bridge.rescore`) was chosen on a development set of the project's own
spoken questions (Piper and eSpeak voices, none of the held-out audio): benchmarks/rescore_weight.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from speechllm.weights.llm import cache_kwargs

MARK = "\ue000"  # a private-use character no chat template or user text contains


def user_turn_frame(tokenizer: Any, system_prompt: str | None) -> tuple[str, str]:
    """The chat template's text before and after the content of a lone user turn (the system turn
    included, as the model renders it)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    text = tokenizer.apply_chat_template([*messages, {"role": "user", "content": MARK}], tokenize=False)
    before, after = str(text).split(MARK)
    return before, after.rstrip()


def _layer_kv(cache: DynamicCache) -> list[tuple[Tensor, Tensor]]:
    """Each layer's keys and values (B, H, L, D_head) of a filled LLM cache; ValueError for a layer
    that holds none (the inference layer's stricter `prompt_cache.filled_layers` is above this one)."""
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            raise ValueError(f"rescoring needs a full-attention LLM cache, got {type(layer).__name__}")
        out.append((keys, values))
    return out


class TurnScorer:
    """The LLM's summed log-probability of texts as the user's turn (its tokens and the turn's end),
    given what precedes it in the template. The template's start (system turn, user header) is run
    once and its keys and values reused; the texts run as one right-padded batch on top of it."""

    def __init__(self, llm: Any, tokenizer: Any, system_prompt: str | None) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.before, self.after = user_turn_frame(tokenizer, system_prompt)
        self.prefix = list(tokenizer(self.before, add_special_tokens=False).input_ids)
        self._kv: list[tuple[Tensor, Tensor]] | None = None  # per layer: 1, H, P, D_head
        self._first: Tensor | None = None  # V: log-probs of the turn's first token
        self._last: tuple[list[list[int]], DynamicCache] | None = None  # the last call's turns and cache

    def _prefix_state(self, device: torch.device) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        if self._kv is None or self._first is None or self._first.device != device:
            cache = DynamicCache()
            ids = torch.tensor([self.prefix], device=device)
            out = self.llm(input_ids=ids, **cache_kwargs(self.llm, cache), use_cache=True, logits_to_keep=1)
            self._kv = _layer_kv(cache)
            self._first = out.logits[0, -1].float().log_softmax(-1)
        return self._kv, self._first

    def _turn_ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(self.before + text + self.after, add_special_tokens=False).input_ids)
        if ids[: len(self.prefix)] != self.prefix:  # the text merged with the header's last token
            raise ValueError(f"the chat template's start does not tokenize apart from the turn {text!r}")
        return ids[len(self.prefix) :]

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        device = next(self.llm.parameters()).device
        kv, first = self._prefix_state(device)
        turns = [self._turn_ids(t) for t in texts]
        n, width, p = len(turns), max(len(t) for t in turns), len(self.prefix)
        ids = torch.zeros(n, width, dtype=torch.long, device=device)
        real = torch.zeros(n, width, dtype=torch.long, device=device)
        for i, t in enumerate(turns):
            ids[i, : len(t)] = torch.tensor(t, device=device)
            real[i, : len(t)] = 1
        cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])
        mask = torch.cat([real.new_ones(n, p), real], dim=1)  # N, P + T
        positions = torch.arange(p, p + width, device=device).expand(n, -1)
        out = self.llm(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(self.llm, cache))
        logits = out.logits
        self._last = (turns, cache)
        logp = logits[:, :-1].float().log_softmax(-1)  # N, T-1, V: predicts tokens 1 ..
        later = logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * real[:, 1:]  # N, T-1
        return (first[ids[:, 0]] + later.sum(-1)).tolist()

    def turn_state(self, index: int) -> tuple[list[int], list[tuple[Tensor, Tensor]]]:
        """The template's token ids through the `index`-th text of the last call (its turn's end
        included), and the LLM's keys and values (1, H, L, D_head) per layer of those positions: a
        prompt that goes on from that turn need not run them again (`inference.prompt_cache`)."""
        if self._last is None:
            raise ValueError("no texts were scored yet")
        turns, cache = self._last
        if not 0 <= index < len(turns):
            raise IndexError(f"text {index} of {len(turns)} scored")
        n = len(self.prefix) + len(turns[index])
        kv = [(k[index : index + 1, :, :n], v[index : index + 1, :, :n]) for k, v in _layer_kv(cache)]
        return [*self.prefix, *turns[index]], kv


def candidates(hypotheses: list[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """The `n` best distinct texts by recognizer log-probability (each text with its best)."""
    best: dict[str, float] = {}
    for text, logp in hypotheses:
        best[text] = max(logp, best.get(text, float("-inf")))
    return sorted(best.items(), key=lambda item: -item[1])[:n]


def best_by_llm(hypotheses: list[tuple[str, float]], llm_logprobs: list[float], weight: float) -> str:
    """The text with the best recognizer log-probability + weight * LLM log-probability."""
    if len(hypotheses) != len(llm_logprobs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(llm_logprobs)} LLM scores")
    if not hypotheses:
        raise ValueError("no hypotheses to choose from")
    scores = [logp + weight * lm for (_, logp), lm in zip(hypotheses, llm_logprobs)]
    return hypotheses[max(range(len(scores)), key=scores.__getitem__)][0]
