"""Batched generation with a KV cache, for any causal LM fed input embeddings.

The core, `DecodeBatch`, needs only an LLM (a Hugging Face causal LM), prompt embeddings with
their padding mask, and the end-of-sequence / pad ids; a SpeechLLM is not needed (eval/bench.py
decodes a cascade's plain LLM with it). Prompts are left-padded so every row's next token sits in
the last column, and each row's position ids count from its own first real token.

- `prefill` runs a prompt batch through the LLM in chunks of `chunk` positions into a fresh cache,
  asking `keep_going()` before each chunk, so a long prompt can be given up between chunks. (A
  bidirectional-prefix mask, 4-D, is run in one piece: a chunk could not see the prompt after it.)
  Given a `PromptCache`, a lone causal prompt starts after the positions it shares with the last
  one (the system turn, earlier turns), whose keys and values are reused.
- `join` merges prefilled rows into the running batch: the narrower of the two caches is
  left-padded with masked zero columns and the two are concatenated row-wise. Masked columns add
  exactly nothing to attention and positions are per row, so a row's numbers do not depend on
  which rows share its batch (up to float rounding).
- `pick` chooses every row's next token; `advance` drops the rows that are finished, cuts the
  columns no remaining row uses from the left, and feeds the others' tokens.

`stream_generate` (one batch from start to end, rows leaving as they finish) and `generate`
(answers as text) are built on it for a SpeechLLM; the engine drives a `DecodeBatch` itself to
let new requests join at any step (continuous batching).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from speechllm.inference.detok import TextStream
from speechllm.inference.prompt_cache import PromptCache, Reused, filled_layers
from speechllm.model.processor import Message
from speechllm.model.speech_llm import Batch, SpeechLLM, position_ids
from speechllm.weights.llm import cache_kwargs

PREFILL_CHUNK = 256
"""Prompt positions per prefill call: the grain at which a long prompt can be cancelled."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    """Strings that end an answer (not included in it)."""
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def llm_eos_ids(llm: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an answer: the LLM's generation config's and the tokenizer's eos."""
    ids: set[int] = set()
    for value in (getattr(llm.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids


def eos_token_ids(model: SpeechLLM) -> set[int]:
    return llm_eos_ids(model.llm, model.processor.tokenizer)


def pick_tokens(logits: Tensor, gen: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """Next token per row from logits (B, V): argmax, or a sample from the top_p nucleus."""
    if not gen.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / gen.temperature, dim=-1)
    if gen.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > gen.top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Prefilled:
    """Rows whose prompt is in `cache`: what `DecodeBatch.join` takes."""

    cache: DynamicCache
    mask: Tensor  # B, L (1 = a real position; left padding)
    next_pos: Tensor  # B, 1: the position of each row's next token
    logits: Tensor  # B, V: predict each row's next token
    hidden: Tensor | None  # B, D: the last-layer state behind `logits` (when asked for)


def _left_pad(x: Tensor, width: int, dim: int) -> Tensor:
    """Zeros prepended along `dim` up to `width`."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _cat_hidden(a: Tensor | None, n_a: int, b: Tensor | None, n_b: int) -> Tensor | None:
    """Hidden states (n_a, D) and (n_b, D) stacked; a side that has none gets zeros."""
    if a is None and b is None:
        return None
    like = a if a is not None else b
    assert like is not None
    return torch.cat([x if x is not None else like.new_zeros(n, like.shape[-1]) for x, n in ((a, n_a), (b, n_b))])


class DecodeBatch:
    """Rows decoding together over one left-padded KV cache; rows join after their prefill and leave when done."""

    def __init__(self, llm: Any, gen: GenerationConfig, *, chunk: int = PREFILL_CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.llm = llm
        self.gen = gen
        self.chunk = chunk
        self.state: Prefilled | None = None
        self._generator: torch.Generator | None = None

    @property
    def size(self) -> int:
        return 0 if self.state is None else self.state.mask.shape[0]

    @property
    def hidden(self) -> Tensor | None:
        """(B, D): the states behind the logits `pick` reads, when asked for (zeros for rows that did not ask)."""
        return None if self.state is None else self.state.hidden

    @torch.no_grad()
    def prefill(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor,
        *,
        full_mask: Tensor | None = None,
        want_hidden: bool = False,
        keep_going: Callable[[], bool] | None = None,
        reuse: PromptCache | None = None,
    ) -> Prefilled | None:
        """Prompts (B, L, D) with their padding mask (B, L) into a fresh cache; None when `keep_going()`
        said no before a chunk. `full_mask` (B, 1, L, L): a prefix-LM mask (prefilled in one piece).
        `reuse`: a prompt cache; a lone causal prompt starts from the positions it shares with the
        stored one, and is stored in its place."""
        positions = position_ids(attention_mask)  # B, L
        if reuse is not None and not PromptCache.usable(attention_mask, full_mask):
            reuse = None
        hit = reuse.lookup(inputs_embeds, want_hidden) if reuse is not None else Reused(DynamicCache(), 0)
        cache, first = hit.cache, hit.positions
        length = attention_mask.shape[1]
        step = length if full_mask is not None else self.chunk
        out = None
        for start in range(first, length, step):
            if keep_going is not None and not keep_going():
                return None
            end = min(start + step, length)
            out = self.llm(
                inputs_embeds=inputs_embeds[:, start:end],
                attention_mask=full_mask if full_mask is not None else attention_mask[:, :end],
                position_ids=positions[:, start:end],
                **cache_kwargs(self.llm, cache),
                use_cache=True,
                output_hidden_states=want_hidden and end == length,
                logits_to_keep=1,
            )
        if reuse is not None:
            reuse.store(inputs_embeds, cache)
        if out is None:  # the whole prompt was an offered piece, with the outputs after it
            assert hit.logits is not None, "a prompt has at least one position"
            return Prefilled(cache, attention_mask, positions[:, -1:] + 1, hit.logits, hit.hidden)
        hidden = out.hidden_states[-1][:, -1] if want_hidden else None
        return Prefilled(cache, attention_mask, positions[:, -1:] + 1, out.logits[:, -1], hidden)

    def join(self, new: Prefilled) -> None:
        """Add prefilled rows after the running ones (see the module doc)."""
        if self.state is None:
            self.state = new
            return
        old = self.state
        n_old, n_new = old.mask.shape[0], new.mask.shape[0]
        width = max(old.mask.shape[1], new.mask.shape[1])
        for (layer, ka, va), (_, kb, vb) in zip(filled_layers(old.cache), filled_layers(new.cache), strict=True):
            layer.keys = torch.cat([_left_pad(ka, width, 2), _left_pad(kb, width, 2)])  # B, H, L, D
            layer.values = torch.cat([_left_pad(va, width, 2), _left_pad(vb, width, 2)])
        old.mask = torch.cat([_left_pad(old.mask, width, 1), _left_pad(new.mask, width, 1)])
        old.next_pos = torch.cat([old.next_pos, new.next_pos])
        old.logits = torch.cat([old.logits, new.logits])
        old.hidden = _cat_hidden(old.hidden, n_old, new.hidden, n_new)

    def pick(self) -> Tensor:
        """The next token of every row (B,)."""
        assert self.state is not None, "no rows to decode"
        if self.gen.seed is not None and self._generator is None:
            self._generator = torch.Generator(device=self.state.logits.device).manual_seed(self.gen.seed)
        return pick_tokens(self.state.logits, self.gen, self._generator)

    @torch.no_grad()
    def advance(self, tokens: Tensor, keep: Tensor, *, want_hidden: bool = False) -> None:
        """Drop the rows where `keep` (B,) is False, then feed the others their `tokens` (B,)."""
        s = self.state
        assert s is not None, "no rows to decode"
        if not bool(keep.all()):
            rows = keep.nonzero().squeeze(-1)
            if rows.numel() == 0:
                self.state = None
                return
            s.cache.batch_select_indices(rows)
            s.mask, s.next_pos, tokens = s.mask[rows], s.next_pos[rows], tokens[rows]
            first = int(s.mask.any(0).long().argmax())  # columns before it are padding in every row left
            if first:
                for layer, k, v in filled_layers(s.cache):
                    layer.keys, layer.values = k[:, :, first:], v[:, :, first:]
                s.mask = s.mask[:, first:]
        s.mask = torch.cat([s.mask, s.mask.new_ones(s.mask.shape[0], 1)], dim=1)
        out = self.llm(
            input_ids=tokens[:, None],
            attention_mask=s.mask,
            position_ids=s.next_pos,
            **cache_kwargs(self.llm, s.cache),
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        s.next_pos = s.next_pos + 1
        s.logits = out.logits[:, -1]
        s.hidden = out.hidden_states[-1][:, -1] if want_hidden else None


@torch.no_grad()
def generate_tokens(
    llm: Any,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    gen: GenerationConfig,
    *,
    eos: set[int],
    pad_id: int,
    full_mask: Tensor | None = None,
    on_hidden: Callable[[Tensor], None] | None = None,
    reuse: PromptCache | None = None,
) -> Iterator[Tensor]:
    """Yields the next token of every row (B,) at each step; rows that finished yield `pad_id`.

    Stops when every row has produced an end-of-sequence token or max_new_tokens is reached.
    `on_hidden(h)`, when given, receives before each yield the LLM's last-layer hidden state that
    predicted the token (B, D): what the speech decoder reads (speechllm.speech_out). `reuse`: a
    `PromptCache` kept across calls (see `DecodeBatch.prefill`).
    """
    rows = DecodeBatch(llm, gen)
    first = rows.prefill(
        inputs_embeds, attention_mask, full_mask=full_mask, want_hidden=on_hidden is not None, reuse=reuse
    )
    assert first is not None
    rows.join(first)
    b = attention_mask.shape[0]
    alive = torch.arange(b, device=attention_mask.device)  # batch index of each row still decoding
    eos_t = torch.tensor(sorted(eos), device=attention_mask.device)
    for step in range(gen.max_new_tokens):
        token = rows.pick()
        out = token if alive.numel() == b else token.new_full((b,), pad_id).index_copy(0, alive, token)
        if on_hidden is not None:
            h = rows.hidden
            assert h is not None
            on_hidden(h if alive.numel() == b else h.new_zeros(b, h.shape[-1]).index_copy(0, alive, h))
        yield out
        keep = ~torch.isin(token, eos_t)
        alive = alive[keep]
        if alive.numel() == 0 or step == gen.max_new_tokens - 1:
            return
        rows.advance(token, keep, want_hidden=on_hidden is not None)


def offer_heard_turn(model: SpeechLLM, reuse: PromptCache | None) -> None:
    """Hand the user's turn that N-best rescoring ran last (`SpeechLLM.take_heard_turn`) to the prompt
    cache, so the prompt built on it runs no position (or only those after the user's turn)."""
    turn = model.take_heard_turn()
    if reuse is not None and turn is not None:
        table = model.embedding_table()
        rows = table[torch.tensor(turn.ids, device=table.device)]  # L, D: the prompt's own rows
        reuse.offer(rows, turn.kv, turn.logits, turn.hidden)


def stream_generate(
    model: SpeechLLM,
    batch: Batch,
    gen: GenerationConfig,
    on_hidden: Callable[[Tensor], None] | None = None,
    reuse: PromptCache | None = None,
) -> Iterator[Tensor]:
    """`generate_tokens` for a SpeechLLM batch (its prefix mask, eos and pad ids); with `reuse`, the
    rescored user turn is offered to it first (`offer_heard_turn`)."""
    offer_heard_turn(model, reuse)
    mask = model.attention_mask_for(batch.attention_mask, batch.prefix_lengths)
    return generate_tokens(
        model.llm,
        batch.inputs_embeds,
        batch.attention_mask,
        gen,
        eos=eos_token_ids(model),
        pad_id=model.processor.tokenizer.pad_token_id,
        full_mask=mask if mask.dim() == 4 else None,
        on_hidden=on_hidden,
        reuse=reuse,
    )


def generate(
    model: SpeechLLM,
    conversations: list[list[Message]],
    gen: GenerationConfig | None = None,
    frames: list[Tensor] | None = None,
) -> list[str]:
    """The answer to each conversation, as text (`frames`: precomputed encoder outputs, see prepare)."""
    gen = gen or GenerationConfig()
    batch = model.prepare(conversations, left_pad=True, frames=frames)
    with text_only_context(model, batch):
        return decode_stream(model, stream_generate(model, batch, gen), len(conversations), gen.stop)


def text_only_context(model: SpeechLLM, batch: Batch) -> contextlib.AbstractContextManager[None]:
    """LoRA bypassed when the batch holds no speech (unless config.lora_on_text): text gets the plain LLM."""
    has_speech = bool((batch.input_ids == model.processor.speech_token_id).any())
    if model.config.lora.enabled and not model.config.lora_on_text and not has_speech:
        return model.lora_disabled()
    return contextlib.nullcontext()


def decode_stream(model: SpeechLLM, steps: Iterator[Tensor], batch_size: int, stop: list[str]) -> list[str]:
    """The text of each row of `steps`, ended by its end-of-sequence token or first stop string."""
    return decode_tokens(steps, batch_size, eos_token_ids(model), model.processor.decode, stop)


def decode_tokens(
    steps: Iterator[Tensor], batch_size: int, eos: set[int], decode: Callable[[list[int]], str], stop: list[str]
) -> list[str]:
    """Like decode_stream, with the eos ids and the detokenizer given."""
    texts = [TextStream(decode, stop) for _ in range(batch_size)]
    pieces: list[list[str]] = [[] for _ in range(batch_size)]
    finished = [False] * batch_size
    for step in steps:
        for i, t in enumerate(step.tolist()):
            if finished[i]:
                continue
            if t in eos:
                finished[i] = True
                continue
            pieces[i].append(texts[i].push(t))
            finished[i] = texts[i].stopped
        if all(finished):
            break
    return ["".join(p) + t.flush() for p, t in zip(pieces, texts)]
