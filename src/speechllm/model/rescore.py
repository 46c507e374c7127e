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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from speechllm.weights.llm import cache_kwargs

MARK = "\ue000"  # a private-use character no chat template or user text contains


def user_turn_frame(tokenizer: Any, system_prompt: str | None, answer: bool = False) -> tuple[str, str]:
    """The chat template's text before and after the content of a lone user turn (the system turn
    included, as the model renders it); `answer`: after it, the assistant's header too (the prompt
    an answer is generated from)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    text = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": MARK}], tokenize=False, add_generation_prompt=answer
    )
    before, after = str(text).split(MARK)
    return before, after if answer else after.rstrip()


@dataclass
class HeardTurn:
    """A scored transcript as the LLM ran it: what a prompt on it need not run again."""

    ids: list[int]
    """The chat template's token ids through the user's turn and, where it tokenizes apart, the
    assistant's header after it."""
    kv: list[tuple[Tensor, Tensor]]
    """Per layer, the LLM's keys and values (1, H, L, D_head) of those positions."""
    logits: Tensor
    """(V,): the LLM's logits after the last of `ids` (the answer's first token, after a header)."""
    hidden: Tensor
    """(D,): the LLM's final hidden state at the last of `ids`."""


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
    once and its keys and values reused; the texts run as one right-padded batch on top of it, each
    followed by the assistant's header (not scored), so that the chosen one's run is the whole prompt
    of its answer (`turn_state`)."""

    def __init__(self, llm: Any, tokenizer: Any, system_prompt: str | None) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.before, self.after = user_turn_frame(tokenizer, system_prompt)
        self.header = user_turn_frame(tokenizer, system_prompt, answer=True)[1]  # the turn's end + assistant's header
        self.prefix = list(tokenizer(self.before, add_special_tokens=False).input_ids)
        self._kv: list[tuple[Tensor, Tensor]] | None = None  # per layer: 1, H, P, D_head
        self._first: Tensor | None = None  # V: log-probs of the turn's first token
        # the last call's runs (each turn + header), its cache, and each row's last logits and hidden state
        self._last: tuple[list[list[int]], DynamicCache, Tensor, Tensor] | None = None

    def _prefix_state(self, device: torch.device) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        if self._kv is None or self._first is None or self._first.device != device:
            cache = DynamicCache()
            ids = torch.tensor([self.prefix], device=device)
            out = self.llm(input_ids=ids, **cache_kwargs(self.llm, cache), use_cache=True, logits_to_keep=1)
            self._kv = _layer_kv(cache)
            self._first = out.logits[0, -1].float().log_softmax(-1)
        return self._kv, self._first

    def _turn_ids(self, text: str) -> tuple[list[int], list[int]]:
        """The text's user turn as token ids after the template's start (what is scored), and the same
        followed by the assistant's header (what is run), or the turn alone where the header does
        not tokenize apart from it."""
        p = len(self.prefix)
        ids = list(self.tokenizer(self.before + text + self.after, add_special_tokens=False).input_ids)
        if ids[:p] != self.prefix:  # the text merged with the header's last token
            raise ValueError(f"the chat template's start does not tokenize apart from the turn {text!r}")
        run = list(self.tokenizer(self.before + text + self.header, add_special_tokens=False).input_ids)
        return ids[p:], run[p:] if run[: len(ids)] == ids else ids[p:]

    def __call__(self, texts: list[str]) -> list[float]:
        return [sum(scores) for scores in self.token_scores(texts)]

    @torch.no_grad()
    def token_scores(self, texts: list[str]) -> list[list[float]]:
        """Each text's log-probability per token of its user turn (its tokens and the turn's end),
        in order: what `__call__` sums, from the same single pass."""
        if not texts:
            return []
        device = next(self.llm.parameters()).device
        kv, first = self._prefix_state(device)
        turns, runs = zip(*(self._turn_ids(t) for t in texts))
        n, width, p = len(runs), max(len(r) for r in runs), len(self.prefix)
        ids = torch.zeros(n, width, dtype=torch.long, device=device)
        real = torch.zeros(n, width, dtype=torch.long, device=device)  # positions run
        for i, run in enumerate(runs):
            ids[i, : len(run)] = torch.tensor(run, device=device)
            real[i, : len(run)] = 1
        cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])
        mask = torch.cat([real.new_ones(n, p), real], dim=1)  # N, P + T
        positions = torch.arange(p, p + width, device=device).expand(n, -1)
        out = self.llm(input_ids=ids, attention_mask=mask, position_ids=positions,
                       **cache_kwargs(self.llm, cache), output_hidden_states=True)  # fmt: skip
        logits = out.logits
        last = real.sum(-1) - 1  # N: each row's last position run
        rows = torch.arange(n, device=device)
        self._last = (list(runs), cache, logits[rows, last], out.hidden_states[-1][rows, last])
        t = max(len(turn) for turn in turns)  # the longest user's turn: the headers are not scored
        logp = logits[:, : t - 1].float().log_softmax(-1)  # N, t-1, V: predicts tokens 1 .. t-1
        later = logp.gather(-1, ids[:, 1:t, None]).squeeze(-1)  # N, t-1
        return [[float(first[ids[i, 0]]), *later[i, : len(turn) - 1].tolist()] for i, turn in enumerate(turns)]

    def turn_state(self, index: int) -> HeardTurn:
        """The `index`-th text of the last call as the LLM ran it (`HeardTurn`): a prompt that goes on
        from that turn need not run those positions again (`inference.prompt_cache`)."""
        if self._last is None:
            raise ValueError("no texts were scored yet")
        runs, cache, logits, hidden = self._last
        if not 0 <= index < len(runs):
            raise IndexError(f"text {index} of {len(runs)} scored")
        n = len(self.prefix) + len(runs[index])
        kv = [(k[index : index + 1, :, :n], v[index : index + 1, :, :n]) for k, v in _layer_kv(cache)]
        return HeardTurn([*self.prefix, *runs[index]], kv, logits[index], hidden[index])


def candidates(hypotheses: list[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """The `n` best distinct texts by recognizer log-probability (each text with its best)."""
    best: dict[str, float] = {}
    for text, logp in hypotheses:
        best[text] = max(logp, best.get(text, float("-inf")))
    return sorted(best.items(), key=lambda item: -item[1])[:n]


def best_by_llm(
    hypotheses: list[tuple[str, float]], llm_logprobs: list[float], weight: float, word_bonus: float = 0.0
) -> str:
    """The text with the best recognizer log-probability + weight * LLM log-probability + word_bonus
    * its number of words (a word insertion bonus: both log-probabilities fall with every token, so
    without it a hypothesis gains by dropping a word)."""
    if len(hypotheses) != len(llm_logprobs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(llm_logprobs)} LLM scores")
    if not hypotheses:
        raise ValueError("no hypotheses to choose from")
    scores = [logp + weight * lm + word_bonus * len(text.split()) for (text, logp), lm in zip(hypotheses, llm_logprobs)]
    return hypotheses[max(range(len(scores)), key=scores.__getitem__)][0]
