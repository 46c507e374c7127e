"""How many LLM positions a prompt takes, checked against the context before any work is done.

A 60,000-word prompt must be refused in milliseconds, not after minutes of prefill. A long text is
bounded from below by tokenizing prefixes of it of doubling length, cut before a space (byte-level
BPE splits text into words before merging, so the tokens of such a prefix are a prefix of the
text's tokens), until one holds more tokens than the context has room for; each audio is bounded
by the positions its length can give. Only a prompt within these bounds is rendered and tokenized
for the exact count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from speechllm.inference.request import PromptTooLong
from speechllm.model.encoder import encoder_output_lengths
from speechllm.model.features import HOP
from speechllm.model.processor import Message
from speechllm.model.speech_llm import SpeechLLM

PROBE_CHARS_PER_POSITION = 4
"""Characters per position of the first prefix tried (English takes ~4-5 characters a token)."""


class PromptBudget:
    """How many positions a prompt takes in the LLM, checked against its context before any work."""

    def __init__(self, model: SpeechLLM) -> None:
        self.model = model
        self.context: int | None = getattr(model.llm.config, "max_position_embeddings", None)

    def speech_positions(self, audio: Any) -> int:
        """The most LLM positions an audio (16 kHz samples) can take: exact for stack and pool compressors,
        an upper bound when CTC or the adaptor drops frames."""
        n = int(np.asarray(audio).shape[0]) if isinstance(audio, np.ndarray) else 0
        frames = torch.tensor([max(1, n // HOP)])
        positions = encoder_output_lengths(frames)  # Whisper windows of 3000 frames give 1500 each: the same sum
        lengths = getattr(self.model.compressor, "output_lengths", None)
        return int(lengths(positions) if lengths is not None else positions)

    def check(self, conversation: list[Message], max_new_tokens: int) -> int:
        """The prompt's positions; PromptTooLong when they and `max_new_tokens` exceed the context."""
        if self.context is None:
            return 0
        texts, audios = _parts(conversation)
        speech = sum(self.speech_positions(a) for a in audios)
        lower = speech
        for text in texts:
            lower += self._tokens_at_least(text, self.context - max_new_tokens - lower)
        self._refuse(lower, max_new_tokens, "at least ")
        rendered = self.model.processor.render(conversation)
        positions = len(rendered.input_ids) - len(rendered.audios) + speech
        self._refuse(positions, max_new_tokens, "")
        return positions

    def _tokens_at_least(self, text: str, limit: int) -> int:
        """A lower bound on the tokens of `text` that exceeds `limit` if the text clearly does, else 0.
        Tokenizes prefixes of doubling length, so the cost is a few times that of `limit` tokens."""
        probe = PROBE_CHARS_PER_POSITION * max(limit, 1)
        while probe < len(text):
            cut = text.rfind(" ", 0, probe)
            prefix = text[: cut if cut > 0 else probe]
            n = len(self.model.processor.tokenizer(prefix, add_special_tokens=False).input_ids)
            if n > limit:
                return n
            probe *= 2
        return 0

    def _refuse(self, positions: int, max_new_tokens: int, qualifier: str) -> None:
        assert self.context is not None
        if positions + max_new_tokens > self.context:
            raise PromptTooLong(
                f"the prompt takes {qualifier}{positions} positions (text and audio) and asks for up to "
                f"{max_new_tokens} new tokens, but the LLM's context holds {self.context} positions: at most "
                f"{max(0, self.context - max_new_tokens)} are left for a prompt with that many new tokens"
            )


def _parts(conversation: list[Message]) -> tuple[list[str], list[Any]]:
    """The texts and audio payloads of a conversation (malformed messages are left to the processor)."""
    texts, audios = [], []
    for m in conversation:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif isinstance(part, dict) and part.get("type") in ("audio", "input_audio"):
                    audios.append(part.get("audio"))
    return texts, audios
