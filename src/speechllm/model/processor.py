"""Turns conversations with audio into token ids for the speech LLM.

A conversation is a list of chat messages, `{"role": ..., "content": str | list[part]}`, where a
part is `{"type": "text", "text": str}` or `{"type": "audio", "audio": np.ndarray}` (16 kHz mono).
Each audio part becomes one placeholder token in the LLM's own chat template; once the speech
encoder has said how many positions each audio yields, `expand` repeats each placeholder that many
times and the model scatters the speech embeddings into those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from speechllm.model.features import LogMel

Message = dict[str, Any]


@dataclass
class Rendered:
    """One conversation as token ids with one placeholder per audio."""

    input_ids: list[int]
    audios: list[Any]
    """The audio parts' payloads in order: waveforms, or whatever stands for precomputed frames."""
    prompt_length: int
    """Tokens before the answer (the whole sequence when there is no answer)."""


class SpeechLLMProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        log_mel: LogMel,
        speech_token: str = "<speech>",
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.log_mel = log_mel
        self.speech_token = speech_token
        self.system_prompt = system_prompt
        if speech_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [speech_token]})
        self.speech_token_id = int(tokenizer.convert_tokens_to_ids(speech_token))  # type: ignore[arg-type]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def _flatten(self, messages: list[Message]) -> tuple[list[dict[str, str]], list[Any]]:
        if not messages:
            raise ValueError("a conversation needs at least one message, got none")
        flat, audios = [], []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
            content = m["content"]
            if isinstance(content, str):
                if self.speech_token in content:
                    raise ValueError(f"message {i} contains the reserved token {self.speech_token!r} as text")
                flat.append({"role": m["role"], "content": content})
                continue
            pieces = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    pieces.append(part["text"])
                elif kind in ("audio", "input_audio"):
                    audio = part["audio"]
                    if isinstance(audio, np.ndarray) and (audio.ndim != 1 or audio.size == 0):
                        raise ValueError(f"message {i}: audio must be a non-empty 1-D array, got shape {audio.shape}")
                    pieces.append(self.speech_token)
                    audios.append(audio)
                else:
                    raise ValueError(f"message {i}: unknown content part type {kind!r}; expected 'text' or 'audio'")
            flat.append({"role": m["role"], "content": "\n".join(pieces)})
        if self.system_prompt is not None and flat[0]["role"] != "system":
            flat.insert(0, {"role": "system", "content": self.system_prompt})
        return flat, audios

    def _ids(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def render(self, messages: list[Message], answer: str | None = None) -> Rendered:
        """Token ids of a conversation, ready for generation, or followed by `answer` for training."""
        flat, audios = self._flatten(messages)
        prompt = self._ids(flat, add_generation_prompt=True)
        if answer is None:
            return Rendered(prompt, audios, len(prompt))
        full = self._ids([*flat, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        if full[: len(prompt)] != prompt:
            raise ValueError("the chat template renders the prompt differently once an answer follows; cannot mask it")
        return Rendered(full, audios, len(prompt))

    def expand(self, input_ids: list[int], speech_lengths: list[int]) -> list[int]:
        """Repeat the i-th placeholder `speech_lengths[i]` times."""
        n_placeholders = sum(1 for t in input_ids if t == self.speech_token_id)
        if n_placeholders != len(speech_lengths):
            raise ValueError(
                f"the prompt has {n_placeholders} speech placeholders "
                f"but {len(speech_lengths)} audio segments were given"
            )
        out: list[int] = []
        lengths = iter(speech_lengths)
        for t in input_ids:
            out.extend([t] * next(lengths) if t == self.speech_token_id else [t])
        return out

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
