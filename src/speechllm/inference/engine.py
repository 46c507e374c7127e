"""A serving engine around a SpeechLLM: a bounded queue, one worker thread, dynamic batching.

Callers (HTTP handlers, the CLI) `submit` a conversation and get a `Request` back; they read its
events (`Delta` text pieces, `Audio` chunks when it speaks, then one `Done` or `Failed`) from their
own thread or event loop. One worker thread owns the model: it takes the oldest waiting request
plus up to `max_batch - 1` others that can share its sampling settings, prepares them as one
left-padded batch (the speech prefix is encoded once), and runs `stream_generate` with the KV
cache, routing each row's tokens to its request. The model is touched by that thread only, so
nothing else needs a lock.

Text is detokenized incrementally: a delta is only emitted once the tokens decode to complete
characters, and text that could be the start of a stop string is held back until it is known not
to be one. Joining a request's deltas gives exactly its final answer.

Speech (`submit(speak=True)`, an engine built with a `SpeechOutput`): the worker asks
`stream_generate` for the hidden state that predicted each token (only when some row of the batch
speaks) and pushes each answer token with it into the row's own `SpeechStream`; every piece of
audio that stream declares final becomes an `Audio` event, and the rest comes out before `Done`.
Joining a request's audio gives exactly `SpeechOutput.synthesize` of the voiced tokens. A token is
voiced once its text has been shown: while text is held back (a possible start of a stop string,
or an unfinished UTF-8 character) its tokens wait, and when a stop string is reached the waiting
tokens are dropped with it. So the audio never says the stop string; the price at the boundary is
that text sharing a token with the start of the stop string (e.g. "Paris" of a token "Paris."
with stop ".") is in the transcript but not spoken.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from speechllm.inference.generation import GenerationConfig, eos_token_ids, stream_generate
from speechllm.model.processor import Message
from speechllm.model.speech_llm import SpeechLLM

if TYPE_CHECKING:
    from speechllm.speech_out.streaming import SpeechOutput, SpeechStream

log = logging.getLogger(__name__)

ASR_INSTRUCTION = "Transcribe the audio."
"""The instruction `transcribe` puts after each audio: the first ASR training prompt, in the training order
(speechllm.data.builders.build_asr writes the audio part first, then the instruction)."""


class EngineError(Exception):
    """A request the engine cannot take or finish (not the caller's input being wrong)."""


class QueueFull(EngineError):
    """The waiting queue holds `max_queue` requests already (HTTP 429)."""


class EngineClosed(EngineError):
    """The engine is shutting down or was never started (HTTP 503)."""


class RequestTimeout(EngineError, TimeoutError):
    """The request did not finish before its deadline (HTTP 504)."""


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    text: str
    finish_reason: str
    """"stop" (end of sequence or a stop string) or "length" (max_new_tokens reached)."""
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, eq=False)
class Audio:
    """A piece of a spoken answer that is final: play or append it as it comes."""

    samples: np.ndarray
    """float32 mono, (N,) with N > 0."""
    sample_rate: int


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Delta | Audio | Done | Failed


class IncrementalDecoder:
    """Token ids in, text out, never a broken character: bytes of an unfinished UTF-8 sequence (or
    a token whose text depends on the next) wait until the window decodes cleanly.

    Decodes a short window (the tokens of the previous delta plus the new ones) rather than the
    whole answer, so a step costs the same at token 500 as at token 5.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the window: the tokens already shown once, for context
        self._read = 0  # tokens before this index have been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        shown = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(shown) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(shown) :]

    @property
    def holding(self) -> bool:
        """Whether some pushed tokens have not been shown as text yet."""
        return self._read < len(self.ids)

    def flush(self) -> str:
        """Whatever is still held (e.g. an unfinished UTF-8 sequence at the very end), as decoded."""
        shown = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(shown) :]


class StopMatcher:
    """Cuts text at the first stop string, holding back any tail that may still grow into one."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        held = self._held + text
        hits = [i for i in (held.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._held = ""
            return held[: min(hits)], True
        keep = max((k for s in self.stop for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    @property
    def holding(self) -> bool:
        """Whether text is held back as a possible start of a stop string."""
        return bool(self._held)


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One submitted conversation and the events it produces. Read it with `events`/`aevents`."""

    conversation: list[Message]
    gen: GenerationConfig
    deadline: float | None = None
    """time.monotonic() after which the request fails with RequestTimeout."""
    id: int = field(default_factory=lambda: next(_ids))
    speak: bool = False
    """Also produce the answer as speech (`Audio` events before `Done`)."""
    loop: asyncio.AbstractEventLoop | None = None
    _sync: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue, repr=False)
    _async: asyncio.Queue[Event] | None = field(default=None, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    finished: bool = False
    """Set by the worker once Done or Failed was emitted."""

    def __post_init__(self) -> None:
        if self.loop is not None:
            self._async = asyncio.Queue()

    # ---- the worker's side

    def emit(self, event: Event) -> None:
        if self.finished:
            return
        self.finished = isinstance(event, Done | Failed)
        if self._async is None:
            self._sync.put(event)
            return
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody is listening
            self.loop.call_soon_threadsafe(self._async.put_nowait, event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    # ---- the caller's side

    def cancel(self) -> None:
        """Stop generating for this request (e.g. the client went away); no more events are read."""
        self._cancelled.set()

    def _remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def next_event(self) -> Event:
        """The next event, blocking; a Failed(RequestTimeout) once the deadline passes."""
        if self._async is not None:
            raise RuntimeError("this request was submitted with an event loop; read it with aevents()")
        try:
            return self._sync.get(timeout=self._remaining())
        except queue.Empty:
            self.cancel()
            return Failed(RequestTimeout(f"request {self.id} did not finish before its deadline"))

    async def anext_event(self) -> Event:
        if self._async is None:
            raise RuntimeError("this request was submitted without an event loop; read it with events()")
        try:
            return await asyncio.wait_for(self._async.get(), timeout=self._remaining())
        except TimeoutError:
            self.cancel()
            return Failed(RequestTimeout(f"request {self.id} did not finish before its deadline"))

    def events(self) -> Iterator[Delta | Audio | Done]:
        """Deltas (and Audio when speaking), then the Done; raises the error of a Failed."""
        while True:
            event = self.next_event()
            if isinstance(event, Failed):
                raise event.error
            yield event
            if isinstance(event, Done):
                return

    async def aevents(self) -> AsyncIterator[Delta | Audio | Done]:
        while True:
            event = await self.anext_event()
            if isinstance(event, Failed):
                raise event.error
            yield event
            if isinstance(event, Done):
                return

    def result(self) -> Done:
        """Block until the request is done; raises its error if it failed."""
        for event in self.events():
            if isinstance(event, Done):
                return event
        raise AssertionError("events() ended without Done")


def _batch_key(gen: GenerationConfig, request_id: int) -> tuple[Any, ...]:
    """Requests that can share one stream_generate call: all greedy ones, or sampling ones with the
    same temperature/top_p. A seeded request runs alone so its result does not depend on its neighbours."""
    if not gen.do_sample:
        return ("greedy",)
    if gen.seed is not None:
        return ("seeded", request_id)
    return ("sample", gen.temperature, gen.top_p)


class _Voice:
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
class _Row:
    request: Request
    decoder: IncrementalDecoder
    stops: StopMatcher
    prompt_tokens: int
    voice: _Voice | None = None
    text: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def shown(self) -> bool:
        """Whether every pushed token's text has been emitted (nothing held back)."""
        return not (self.decoder.holding or self.stops.holding)

    def send(self, piece: str) -> bool:
        """Emit what of `piece` is safe; True once a stop string was reached."""
        out, stopped = self.stops.feed(piece)
        if out:
            self.text.append(out)
            self.request.emit(Delta(out))
        return stopped

    def finish(self, reason: str) -> None:
        if not self.done:
            if reason != "stop-string":
                self.send(self.decoder.flush())
                tail = self.stops.flush()
                if tail:
                    self.text.append(tail)
                    self.request.emit(Delta(tail))
            if self.voice is not None:
                self.voice.finish(voice_waiting=reason != "stop-string")
            n = len(self.decoder.ids)
            self.request.emit(
                Done("".join(self.text), "length" if reason == "length" else "stop", self.prompt_tokens, n)
            )
        self.done = True


def check_speech_output(model: SpeechLLM, speech: SpeechOutput | None) -> None:
    """ValueError when `speech` reads LLM states of another width than `model`'s LLM gives."""
    width = getattr(model.llm.config, "hidden_size", None)
    if speech is not None and width is not None and speech.decoder.config.llm_dim != width:
        raise ValueError(
            f"the speech output reads LLM states of width {speech.decoder.config.llm_dim}, but this model's "
            f"LLM gives {width}: it was trained for another LLM"
        )


class Engine:
    """Thread-safe front of a SpeechLLM: `submit` from any thread, one worker generates in batches."""

    def __init__(
        self,
        model: SpeechLLM,
        *,
        speech: SpeechOutput | None = None,
        max_batch: int = 8,
        max_queue: int = 64,
        start: bool = True,
    ) -> None:
        """`speech`: what voices answers of requests submitted with speak=True (none: text only)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        check_speech_output(model, speech)
        self.model = model.eval()
        self.speech = speech.eval() if speech is not None else None
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._eos = eos_token_ids(model)
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._worker: threading.Thread | None = None
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._cond:
            if self._worker is not None:
                return
            self._worker = threading.Thread(target=self._loop, name="speechllm-engine", daemon=True)
            self._worker.start()

    @property
    def ready(self) -> bool:
        return self._worker is not None and self._worker.is_alive() and not self._closing

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new requests, fail the waiting ones with EngineClosed, let the running batch end."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for r in waiting:
            r.emit(Failed(EngineClosed("the engine is shutting down")))
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        conversation: list[Message],
        gen: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        block: bool = False,
        speak: bool = False,
    ) -> Request:
        """Queue one conversation. `timeout` (seconds) bounds queueing plus generation; with `loop`,
        events are delivered to that event loop (read them with `aevents`); `speak` adds `Audio` events.
        Raises QueueFull when `max_queue` requests wait already (unless `block`, which waits for room),
        EngineClosed when closing, ValueError for speak=True on an engine without a speech output."""
        if speak and self.speech is None:
            raise ValueError("speak=True needs a speech output, but this engine has none (Engine(model, speech=...))")
        deadline = None if timeout is None else time.monotonic() + timeout
        request = Request(conversation, gen or GenerationConfig(), deadline=deadline, speak=speak, loop=loop)
        with self._cond:
            while True:
                if self._closing:
                    raise EngineClosed("the engine is shutting down")
                if len(self._waiting) < self.max_queue:
                    break
                if not block:
                    raise QueueFull(f"{len(self._waiting)} requests are waiting already (max_queue={self.max_queue})")
                self._cond.wait()
            self._waiting.append(request)
            self._cond.notify_all()
        return request

    def generate(self, conversations: list[list[Message]], gen: GenerationConfig | None = None) -> list[str]:
        """Answers to several conversations (batched by the worker), blocking."""
        requests = [self.submit(c, gen, block=True) for c in conversations]
        return [r.result().text for r in requests]

    def transcribe(self, audios: list[np.ndarray], *, max_new_tokens: int = 256) -> list[str]:
        """Transcripts of 16 kHz mono clips. A model with a token bridge answers with the text its LLM
        reads (the bridge's token path); otherwise the speech LLM is asked to transcribe."""
        if self.model.config.bridge.mode != "continuous":
            with torch.no_grad():
                return self.model.hear(audios)
        conversations = [
            [{"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "text", "text": ASR_INSTRUCTION}]}]
            for a in audios
        ]
        return [t.strip() for t in self.generate(conversations, GenerationConfig(max_new_tokens=max_new_tokens))]

    # ------------------------------------------------------------------ the worker

    def _take(self) -> list[Request] | None:
        """The next batch: the oldest live request and up to max_batch - 1 compatible ones; None once closing."""
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            now = time.monotonic()
            first = self._waiting.popleft()
            key = _batch_key(first.gen, first.id)
            batch = [first]
            for r in list(self._waiting):
                if len(batch) >= self.max_batch:
                    break
                if _batch_key(r.gen, r.id) == key:
                    self._waiting.remove(r)
                    batch.append(r)
            self._cond.notify_all()  # room in the queue for blocked submitters
        live = []
        for r in batch:
            if r.cancelled:
                r.emit(Failed(EngineClosed("cancelled")))
            elif r.expired(now):
                r.emit(Failed(RequestTimeout(f"request {r.id} waited past its deadline")))
            else:
                live.append(r)
        return live

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while (batch := self._take()) is not None:
            if batch:
                self._run(batch)

    def _run(self, requests: list[Request]) -> None:
        try:
            batch = self.model.prepare([r.conversation for r in requests], left_pad=True)
        except Exception as e:
            if len(requests) == 1:
                requests[0].emit(Failed(e))
            else:  # find the request at fault; the others still get their answers
                for r in requests:
                    self._run([r])
            return
        try:
            self._generate(requests, batch)
        except Exception as e:
            log.exception("generation failed for a batch of %d", len(requests))
            for r in requests:
                r.emit(Failed(e))

    def _generate(self, requests: list[Request], batch: Any) -> None:
        first = requests[0].gen
        gen = replace(first, max_new_tokens=max(r.gen.max_new_tokens for r in requests), stop=[])
        prompt_tokens = batch.attention_mask.sum(1).tolist()
        decode = self.model.processor.decode
        rows = [
            _Row(r, IncrementalDecoder(decode), StopMatcher(r.gen.stop), int(n), self._voice(r))
            for r, n in zip(requests, prompt_tokens)
        ]
        hidden: list[Tensor] = []  # the current step's hidden states (B, D), when some row speaks

        def keep_hidden(h: Tensor) -> None:
            hidden[:] = [h.to(self._speech_device)]

        speaking = any(row.voice is not None for row in rows)
        # Rows that do not speak cost nothing extra: hidden states are only asked for when one does.
        steps = stream_generate(self.model, batch, gen, on_hidden=keep_hidden if speaking else None)
        try:
            for step in steps:
                now = time.monotonic()
                for i, (row, token) in enumerate(zip(rows, step.tolist())):
                    if not row.done:
                        self._advance(row, token, now, hidden[0][i] if row.voice is not None else None)
                if all(row.done for row in rows):
                    break
        finally:
            if isinstance(steps, Generator):  # frees the KV cache now, not at garbage collection
                steps.close()
        for row in rows:
            row.finish("length")

    def _voice(self, request: Request) -> _Voice | None:
        return _Voice(self.speech, request) if request.speak and self.speech is not None else None

    @property
    def _speech_device(self) -> torch.device:
        assert self.speech is not None
        return next(self.speech.decoder.parameters()).device

    def _advance(self, row: _Row, token: int, now: float, hidden: Tensor | None) -> None:
        """One new token of a row; `hidden` (D,) predicted it (given for speaking rows only)."""
        r = row.request
        if r.cancelled:
            row.done = True
            return
        if r.expired(now):
            r.emit(Failed(RequestTimeout(f"request {r.id} did not finish before its deadline")))
            row.done = True
            return
        if token in self._eos:
            row.finish("stop")
            return
        if row.send(row.decoder.push(token)):
            row.finish("stop-string")  # this token carries (the end of) the stop string: not voiced
            return
        if row.voice is not None:
            assert hidden is not None
            row.voice.add(hidden, token, shown=row.shown)
        if len(row.decoder.ids) >= r.gen.max_new_tokens:
            row.finish("length")
