"""Batched generation with a KV cache.

The prompt (text + speech) is embedded and run through the LLM once (prefill); each later step
feeds only the new token, so a step costs the same at token 10 as at token 200 apart from
attention over the cache. Prompts are left-padded so every row's next token sits in the last column.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache

from speechllm.model.processor import Message
from speechllm.model.speech_llm import Batch, SpeechLLM, position_ids


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


def eos_token_ids(model: SpeechLLM) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.llm.generation_config, "eos_token_id", None), model.processor.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids


def _pick(logits: Tensor, gen: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """Next token per row from logits (B, V)."""
    if not gen.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / gen.temperature, dim=-1)
    if gen.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > gen.top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream_generate(
    model: SpeechLLM,
    batch: Batch,
    gen: GenerationConfig,
    on_hidden: Callable[[Tensor], None] | None = None,
) -> Iterator[Tensor]:
    """Yields the next token of every row (B,) at each step; rows that finished yield the pad id.

    Stops when every row has produced an end-of-sequence token or max_new_tokens is reached.
    `on_hidden(h)`, when given, receives before each yield the LLM's last-layer hidden state that
    predicted the token (B, D): what the speech decoder reads (speechllm.speech_out).
    """
    llm = model.llm
    eos = torch.tensor(sorted(eos_token_ids(model)), device=batch.input_ids.device)
    pad_id = model.processor.tokenizer.pad_token_id
    generator = None
    if gen.seed is not None:
        generator = torch.Generator(device=batch.input_ids.device).manual_seed(gen.seed)
    cache = DynamicCache()
    mask = batch.attention_mask
    want_hidden = on_hidden is not None
    out = llm(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=model.attention_mask_for(mask, batch.prefix_lengths),
        position_ids=position_ids(mask),
        past_key_values=cache,
        use_cache=True,
        output_hidden_states=want_hidden,
    )
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    next_pos = position_ids(mask)[:, -1:] + 1
    for _ in range(gen.max_new_tokens):
        token = _pick(out.logits[:, -1, :], gen, generator)
        token = token.masked_fill(done, pad_id)
        if on_hidden is not None:
            on_hidden(out.hidden_states[-1][:, -1, :])
        yield token
        done |= torch.isin(token, eos)
        if bool(done.all()):
            return
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        out = llm(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        next_pos = next_pos + 1


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
    eos = eos_token_ids(model)
    tokens: list[list[int]] = [[] for _ in range(batch_size)]
    finished = [False] * batch_size
    for step in steps:
        for i, t in enumerate(step.tolist()):
            if finished[i]:
                continue
            if t in eos:
                finished[i] = True
                continue
            tokens[i].append(t)
            if stop and any(s in model.processor.decode(tokens[i][-16:]) for s in stop):
                finished[i] = True
        if all(finished):
            break
    return [truncate_at_stop(model.processor.decode(t), stop) for t in tokens]


def truncate_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
