"""What a caller of the engine holds: the `Request`, the events it produces, and the errors.

A request's events are `Delta` (a piece of text), `Audio` (a final piece of a spoken answer, only
when it speaks), then exactly one `Done` or `Failed`. They are read from the caller's own thread
(`events`, `result`) or event loop (`aevents`, when submitted with `loop`); the engine's worker
thread is the only writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np

from speechllm.inference.generation import GenerationConfig
from speechllm.model.processor import Message


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


class Cancelled(EngineError):
    """The caller cancelled the request (e.g. its client went away); nobody reads this."""


class PromptTooLong(ValueError):
    """The prompt and the answer it asks for do not fit in the LLM's context (HTTP 400)."""


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
    hear: np.ndarray | None = None
    """For a transcription answered by the model's token bridge, its clip: one Delta with the text the
    LLM would read for it, then Done (no generation; see Engine.submit_transcription)."""
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
