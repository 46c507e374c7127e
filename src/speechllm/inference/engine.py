"""A serving engine around a SpeechLLM: a bounded queue, one worker thread, continuous batching.

Callers (HTTP handlers, the CLI) `submit` a conversation and get a `Request` back (see
speechllm.inference.request); they read its events (`Delta` text pieces, `Audio` chunks when it
speaks, then one `Done` or `Failed`) from their own thread or event loop. `submit` refuses at once,
in the caller's thread, a prompt that cannot fit the LLM's context with the answer it asks for
(`PromptTooLong`, naming both lengths; see speechllm.inference.budget: a 60,000-word prompt is
refused after tokenizing about two contexts' worth of it, tens of milliseconds).

One worker thread owns the model, so nothing else needs a lock. It keeps one `DecodeBatch` (rows
decoding over one left-padded KV cache) and loops: admit waiting requests into free slots,
prefill the ones admitted together as one left-padded group (in chunks, giving up between chunks
once all of them are cancelled or past their deadline, or the engine is closing) and join them to
the batch; pick every row's next token; route each token to its row; drop the rows that are
finished and feed the rest. So a new request joins at the next step instead of waiting for the
longest answer (continuous batching;
`continuous=False` admits only into an empty batch, the old dynamic batching, for comparison).
A request joins only a batch that can share its sampling settings (all greedy ones, or sampling
ones with the same temperature/top_p; a seeded one runs alone so its result does not depend on its
neighbours), and only from the head of the queue, so nobody waits forever behind later arrivals.

A cancelled or expired request stops at the next decode step and frees its slot; its prefill
stops at the next chunk unless others prefilled with it still want theirs.
`close` fails the waiting requests with `EngineClosed` (HTTP 503) at once, lets the running ones
finish for up to `timeout` seconds, then fails them too: it never hangs.

Text is detokenized incrementally (speechllm.inference.detok): a delta is only emitted once the
tokens decode to complete characters, and text that could be the start of a stop string is held
back until it is known not to be one. Joining a request's deltas gives exactly its final answer.

Speech (`submit(speak=True)`, an engine built with a `SpeechOutput`): the hidden state that
predicted each token is asked of the LLM only while some row speaks, and each answer token goes
with it into the row's own `SpeechStream`; every piece of audio that stream declares final becomes
an `Audio` event, and the rest comes out before `Done`. Joining a request's audio gives exactly
`SpeechOutput.synthesize` of the voiced tokens. A token is voiced once its text has been shown:
while text is held back (a possible start of a stop string, or an unfinished UTF-8 character) its
tokens wait, and when a stop string is reached the waiting tokens are dropped with it. So the audio
never says the stop string; the price at the boundary is that text sharing a token with the start
of the stop string (e.g. "Paris" of a token "Paris." with stop ".") is in the transcript but not spoken.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechllm.inference.budget import PromptBudget
from speechllm.inference.detok import TextStream
from speechllm.inference.generation import (
    PREFILL_CHUNK,
    DecodeBatch,
    GenerationConfig,
    eos_token_ids,
    offer_heard_turn,
)
from speechllm.inference.prompt_cache import PromptCache
from speechllm.inference.request import (
    Audio,
    Cancelled,
    Delta,
    Done,
    EngineClosed,
    EngineError,
    Event,
    Failed,
    PromptTooLong,
    QueueFull,
    Request,
    RequestTimeout,
)
from speechllm.inference.rows import Row, SpeechOutput, Voice, check_speech_output
from speechllm.model.processor import Message
from speechllm.model.speech_llm import SpeechLLM

__all__ = [
    "ASR_INSTRUCTION", "Audio", "Cancelled", "Delta", "Done", "Engine", "EngineClosed", "EngineError", "Event",
    "Failed", "PromptTooLong", "QueueFull", "Request", "RequestTimeout", "SpeechOutput", "asr_conversation",
    "check_speech_output",
]  # fmt: skip

log = logging.getLogger(__name__)

ASR_INSTRUCTION = "Transcribe the audio."
"""The instruction after each audio in an ASR prompt: the first ASR training prompt, in the training
order (speechllm.data.builders.build_asr writes the audio part first, then the instruction)."""


def asr_conversation(audio: Any) -> list[Message]:
    """The prompt that asks for a transcript of `audio`, as the model was trained: audio, then instruction.
    The engine's `transcribe` and the server's /v1/audio/transcriptions both use it."""
    return [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": ASR_INSTRUCTION}]}]


def _batch_key(gen: GenerationConfig, request_id: int) -> tuple[Any, ...]:
    """Requests that can decode in one batch: all greedy ones, or sampling ones with the same
    temperature/top_p. A seeded request runs alone so its result does not depend on its neighbours."""
    if not gen.do_sample:
        return ("greedy",)
    if gen.seed is not None:
        return ("seeded", request_id)
    return ("sample", gen.temperature, gen.top_p)


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
        continuous: bool = True,
        prefill_chunk: int = PREFILL_CHUNK,
        reuse_prompts: bool = True,
    ) -> None:
        """`speech`: what voices answers of requests submitted with speak=True (none: text only);
        `continuous`: new requests join the running batch at the next step (else only an empty one);
        `prefill_chunk`: prompt positions per prefill call, the grain at which a prefill can be cancelled;
        `reuse_prompts`: a request prefilled alone reuses the keys and values of the positions its
        prompt shares with the last such one (system turn, earlier turns: `PromptCache`)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        check_speech_output(model, speech)
        self.model = model.eval()
        self.speech = speech.eval() if speech is not None else None
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.continuous = continuous
        self.prefill_chunk = prefill_chunk
        self.prompt_cache = PromptCache() if reuse_prompts else None  # the worker's alone
        self.budget = PromptBudget(model)
        self._eos = eos_token_ids(model)
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()  # set when close() stops waiting for the running requests
        self._worker: threading.Thread | None = None
        self.running = 0
        """Requests in the running batch (read it for monitoring; the worker writes it)."""
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
        """Refuse new requests and fail the waiting ones with EngineClosed at once; let the running ones
        finish for up to `timeout` seconds, then fail them too (at their next step). Never hangs."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for r in waiting:
            r.emit(Failed(EngineClosed("the engine is shutting down")))
        worker = self._worker
        if worker is None or worker is threading.current_thread():
            self._abort.set()
            return
        worker.join(timeout)
        if worker.is_alive():
            self._abort.set()
            worker.join(5.0)  # one decode step or prefill chunk; a daemon thread either way
            if worker.is_alive():
                log.warning("the engine's worker did not stop within 5 s of being aborted")

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
        EngineClosed when closing, PromptTooLong (a ValueError) when the prompt and its max_new_tokens do
        not fit the LLM's context, ValueError for a malformed conversation or for speak=True on an engine
        without a speech output."""
        if speak and self.speech is None:
            raise ValueError("speak=True needs a speech output, but this engine has none (Engine(model, speech=...))")
        gen = gen or GenerationConfig()
        if self._closing:
            raise EngineClosed("the engine is shutting down")
        self.budget.check(conversation, gen.max_new_tokens)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._enqueue(Request(conversation, gen, deadline=deadline, speak=speak, loop=loop), block)

    def submit_transcription(
        self,
        audio: np.ndarray,
        gen: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        block: bool = False,
    ) -> Request:
        """Queue the transcription of a 16 kHz mono clip; its Done holds the transcript. A model with a
        token bridge answers with the text its LLM reads for that audio (what a spoken question becomes);
        any other is asked to transcribe (`asr_conversation`, greedy up to gen.max_new_tokens).
        Errors as `submit`."""
        if self.model.config.bridge.mode == "continuous":
            return self.submit(asr_conversation(audio), gen, timeout=timeout, loop=loop, block=block)
        deadline = None if timeout is None else time.monotonic() + timeout
        request = Request(asr_conversation(audio), gen or GenerationConfig(), deadline=deadline, loop=loop, hear=audio)
        return self._enqueue(request, block)  # refuses when closing, as submit does

    def _enqueue(self, request: Request, block: bool) -> Request:
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
        """Transcripts of 16 kHz mono clips, blocking (see `submit_transcription`)."""
        gen = GenerationConfig(max_new_tokens=max_new_tokens)
        requests = [self.submit_transcription(a, gen, block=True) for a in audios]
        return [r.result().text.strip() for r in requests]

    # ------------------------------------------------------------------ the worker

    def _admit(self, rows: list[Row]) -> list[Request] | None:
        """Requests to start now (see the module doc); waits while there is nothing to do; None: stop."""
        with self._cond:
            while not rows and not self._waiting and not self._closing:
                self._cond.wait()
            if self._closing and not rows:
                return None
            room = self.max_batch - len(rows) if self.continuous or not rows else 0
            taken: list[Request] = []
            if room > 0 and self._waiting:
                key = _batch_key(rows[0].request.gen, rows[0].request.id) if rows else None
                if key is None:  # a new batch: the oldest request and any that can share its batch
                    first = self._waiting.popleft()
                    key, taken = _batch_key(first.gen, first.id), [first]
                    candidates = [r for r in self._waiting if _batch_key(r.gen, r.id) == key][: room - 1]
                else:  # joining: from the head of the queue only, so no one is overtaken for ever
                    candidates = []
                    for r in self._waiting:
                        if len(candidates) >= room or _batch_key(r.gen, r.id) != key:
                            break
                        candidates.append(r)
                for r in candidates:
                    self._waiting.remove(r)
                taken += candidates
                self._cond.notify_all()  # room in the queue for blocked submitters
        now = time.monotonic()
        live = []
        for r in taken:
            if r.cancelled:
                r.emit(Failed(Cancelled(f"request {r.id} was cancelled")))
            elif r.expired(now):
                r.emit(Failed(RequestTimeout(f"request {r.id} waited past its deadline")))
            else:
                live.append(r)
        return live

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        rows: list[Row] = []
        batch: DecodeBatch | None = None
        while (admitted := self._admit(rows)) is not None:
            self._hear([r for r in admitted if r.hear is not None])
            admitted = [r for r in admitted if r.hear is None]
            if admitted:
                batch = self._start(admitted, batch, rows)
            if not rows:
                batch = None
                continue
            assert batch is not None
            try:
                self._step(batch, rows)
            except Exception as e:
                log.exception("a decode step failed for a batch of %d", len(rows))
                for row in rows:
                    row.fail(e)
            rows[:] = [row for row in rows if not row.done]
            self.running = len(rows)
            if not rows:
                batch = None  # the next batch gets its own sampling settings and generator
        for row in rows:
            row.fail(EngineClosed("the engine is shutting down"))
        self.running = 0

    def _start(self, requests: list[Request], batch: DecodeBatch | None, rows: list[Row]) -> DecodeBatch | None:
        """Prefill requests admitted together as one left-padded group and add them to the batch (a new
        one when None). A conversation the model refuses fails alone: the others are started one by one."""

        def keep_going() -> bool:
            alive = any(not (r.cancelled or r.expired()) for r in requests)
            return alive and not self._abort.is_set()

        try:
            prepared = self.model.prepare([r.conversation for r in requests], left_pad=True)
        except Exception as e:
            if len(requests) == 1:
                log.info("request %d failed before decoding: %s", requests[0].id, e)
                requests[0].emit(Failed(e))
                return batch if rows else None
            for r in requests:  # find the request at fault; the others still get their answers
                batch = self._start([r], batch, rows)
            return batch
        try:
            mask = self.model.attention_mask_for(prepared.attention_mask, prepared.prefix_lengths)
            batch = batch or DecodeBatch(self.model.llm, requests[0].gen, chunk=self.prefill_chunk)
            offer_heard_turn(self.model, self.prompt_cache)
            prefilled = batch.prefill(
                prepared.inputs_embeds,
                prepared.attention_mask,
                full_mask=mask if mask.dim() == 4 else None,
                want_hidden=any(r.speak for r in requests),
                keep_going=keep_going,
                reuse=self.prompt_cache,
            )
        except Exception as e:
            log.exception("prefill failed for %d request(s)", len(requests))
            for r in requests:
                r.emit(Failed(e))
            return batch if rows else None
        if prefilled is None:
            for r in requests:
                r.emit(Failed(self._stop_reason(r)))
            return batch if rows else None
        batch.join(prefilled)
        decode = self.model.processor.decode
        for r, n in zip(requests, prepared.attention_mask.sum(1).tolist()):
            rows.append(Row(r, TextStream(decode, r.gen.stop), int(n), self._voice(r)))
        self.running = len(rows)
        return batch

    def _hear(self, requests: list[Request]) -> None:
        """Answer transcriptions with what the token bridge reads (one batch through the recognizer)."""
        if not requests:
            return
        try:
            texts = self.model.hear([r.hear for r in requests if r.hear is not None])
        except Exception as e:
            log.exception("transcribing %d clip(s) failed", len(requests))
            for r in requests:
                r.emit(Failed(e))
            return
        for r, text in zip(requests, texts):
            r.emit(Delta(text))
            r.emit(Done(text, "stop", 0, len(self.model.llm_token_paths([text])[0])))

    def _stop_reason(self, request: Request) -> EngineError:
        if self._abort.is_set():
            return EngineClosed("the engine is shutting down")
        if request.cancelled:
            return Cancelled(f"request {request.id} was cancelled")
        return RequestTimeout(f"request {request.id} did not finish before its deadline")

    def _step(self, batch: DecodeBatch, rows: list[Row]) -> None:
        """One token for every row; the finished rows leave the batch, the others are fed their token."""
        tokens = batch.pick()
        hidden = batch.hidden
        if hidden is not None and any(row.voice is not None for row in rows):
            hidden = hidden.to(self._speech_device)
        now = time.monotonic()
        for i, (row, token) in enumerate(zip(rows, tokens.tolist())):
            self._advance(row, token, now, hidden[i] if row.voice is not None and hidden is not None else None)
        keep = torch.tensor([not row.done for row in rows], device=tokens.device)
        speaking = any(row.voice is not None and not row.done for row in rows)
        batch.advance(tokens, keep, want_hidden=speaking)

    def _voice(self, request: Request) -> Voice | None:
        return Voice(self.speech, request) if request.speak and self.speech is not None else None

    @property
    def _speech_device(self) -> torch.device:
        assert self.speech is not None
        decoder = self.speech.decoder
        return next(decoder.parameters()).device if decoder is not None else torch.device("cpu")

    def _advance(self, row: Row, token: int, now: float, hidden: Tensor | None) -> None:
        """One new token of a row; `hidden` (D,) predicted it (given for speaking rows only)."""
        r = row.request
        if r.cancelled or self._abort.is_set():
            row.fail(self._stop_reason(r))
            return
        if r.expired(now):
            row.fail(RequestTimeout(f"request {r.id} did not finish before its deadline"))
            return
        if token in self._eos:
            row.finish("stop")
            return
        row.send(row.text.push(token))
        if row.text.stopped:
            row.finish("stop-string")  # this token carries (the end of) the stop string: not voiced
            return
        if row.voice is not None:
            assert hidden is not None
            row.voice.add(hidden, token, shown=not row.text.holding)
        if row.text.n_tokens >= r.gen.max_new_tokens:
            row.finish("length")
