"""One answer inside the engine's running batch: its detokenizer, its pieces, and its voice.

`Row` routes a row's tokens into text deltas and, for a speaking request, into its `Voice`: the
row's `SpeechStream`, fed only the tokens whose text has been shown (see speechllm.inference.engine
for why). `SpeechOutput`/`SpeechStream` are what the engine needs of a speech output, so that this
layer imports nothing from speech_out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from speechllm.inference.detok import TextStream
from speechllm.inference.request import Audio, Delta, Done, Failed, Request
from speechllm.model.speech_llm import SpeechLLM


class SpeechStream(Protocol):
    """One answer's speech as its tokens come (speechllm.speech_out.streaming.SpeechStream is one)."""

    def push(self, hidden: Tensor, token: int) -> np.ndarray:
        """The audio (N,) that token (with the LLM state (D,) that predicted it) makes final; often empty."""
        ...

    def finish(self) -> np.ndarray:
        """The rest of the audio, at the end of the answer."""
        ...


class SpeechOutput(Protocol):
    """What the engine needs of a speech output (speechllm.speech_out.streaming.SpeechOutput is one),
    so that this layer imports nothing from speech_out."""

    sample_rate: int
    decoder: Any
    """Its `config.llm_dim` must be the LLM's width; its parameters' device receives the hidden states
    (None for an output that speaks the answer's text and reads no state)."""

    def stream(self) -> SpeechStream: ...

    def eval(self) -> Any: ...


class Voice:
    """A speaking row's SpeechStream, fed the tokens whose text has been shown (see the module doc)."""

    def __init__(self, speech: SpeechOutput, request: Request) -> None:
        self.stream: SpeechStream = speech.stream()
        self.sample_rate = int(speech.sample_rate)
        self.request = request
        self.waiting: list[tuple[Tensor, int]] = []
        """Tokens (with their hidden states (D,)) whose text is still held back."""

    def add(self, hidden: Tensor, token: int, shown: bool) -> None:
        """hidden (D,): the LLM state that predicted `token`; `shown`: all text so far has been emitted."""
        if not shown:
            # A copy: a view would keep the step's whole hidden-state tensor alive while the token waits.
            self.waiting.append((hidden.clone(), token))
            return
        for h, t in [*self.waiting, (hidden, token)]:
            self._emit(self.stream.push(h, t))
        self.waiting = []

    def finish(self, voice_waiting: bool) -> None:
        """End the speech; the waiting tokens are voiced unless the answer ended on a stop string."""
        if voice_waiting:
            for h, t in self.waiting:
                self._emit(self.stream.push(h, t))
        self.waiting = []
        self._emit(self.stream.finish())

    def _emit(self, samples: np.ndarray) -> None:
        if samples.size:
            self.request.emit(Audio(samples, self.sample_rate))


@dataclass
class Row:
    request: Request
    text: TextStream
    prompt_tokens: int
    voice: Voice | None = None
    pieces: list[str] = field(default_factory=list)
    done: bool = False

    def send(self, piece: str) -> None:
        if piece:
            self.pieces.append(piece)
            self.request.emit(Delta(piece))

    def fail(self, error: BaseException) -> None:
        self.request.emit(Failed(error))
        self.done = True

    def finish(self, reason: str) -> None:
        """End the answer: "stop" (end of sequence), "stop-string" or "length"."""
        if not self.done:
            if reason != "stop-string":
                self.send(self.text.flush())
            if self.voice is not None:
                self.voice.finish(voice_waiting=reason != "stop-string")
            finish = "length" if reason == "length" else "stop"
            self.request.emit(Done("".join(self.pieces), finish, self.prompt_tokens, self.text.n_tokens))
        self.done = True


def check_speech_output(model: SpeechLLM, speech: SpeechOutput | None) -> None:
    """ValueError when `speech` reads LLM states of another width than `model`'s LLM gives."""
    width = getattr(model.llm.config, "hidden_size", None)
    decoder = getattr(speech, "decoder", None)  # a text-speaking output reads no LLM state
    if speech is not None and decoder is not None and width is not None and decoder.config.llm_dim != width:
        raise ValueError(
            f"the speech output reads LLM states of width {speech.decoder.config.llm_dim}, but this model's "
            f"LLM gives {width}: it was trained for another LLM"
        )
