"""The FastAPI app: OpenAI-compatible chat and transcription endpoints over an `Engine`, and the page.

Routes: `POST /v1/chat/completions` (JSON or server-sent events; spoken answers when the engine
has a speech output, see speechllm.serve.speech), `POST /v1/audio/transcriptions` (multipart),
`GET /v1/models`, `GET /health`, `GET /` (the web page), `GET /openapi.json` (speechllm.serve.schema). Limits come from
`ServeSettings`: body size 413 (GuardMiddleware), audio duration 400, queue full 429, engine not
ready or shutting down 503, deadline passed 504, missing or wrong API key 401, a prompt that does
not fit the LLM's context with its max_tokens 400 (`context_length_exceeded`). A request whose
client goes away is cancelled (its slot freed at the next decode step or prefill chunk): the
non-streamed handlers poll for the disconnect, a streamed answer's generator is closed by the
streaming response.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from speechllm.inference.engine import (
    Audio,
    Cancelled,
    Delta,
    Done,
    Engine,
    EngineClosed,
    PromptTooLong,
    QueueFull,
    RequestTimeout,
)
from speechllm.inference.engine import Request as EngineRequest
from speechllm.inference.generation import GenerationConfig
from speechllm.serve import openai_api as oa
from speechllm.serve import schema
from speechllm.serve import speech as sp
from speechllm.serve.errors import ApiError, GuardMiddleware, api_error_body, error_body
from speechllm.serve.settings import ServeSettings

log = logging.getLogger("speechllm.serve")


@dataclass
class Served:
    """What the handlers share, kept on `app.state.served`."""

    engine: Engine
    settings: ServeSettings
    transcripts: sp.Transcripts
    """Spoken answers' texts, so a later turn may cite one by its audio id."""

    @property
    def speaks(self) -> bool:
        return self.engine.speech is not None

    @property
    def sample_rate(self) -> int:
        return int(self.engine.speech.sample_rate) if self.engine.speech is not None else 0


def create_app(engine: Engine, settings: ServeSettings | None = None) -> FastAPI:
    """An app serving `engine`; the caller owns the engine (starts and closes it)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="speechllm", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.engine = engine
    app.state.settings = settings
    app.state.served = Served(engine, settings, sp.Transcripts(settings.audio_ttl_seconds))
    _add_error_handlers(app)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_request_bytes)
    if settings.cors_origins:  # outermost, so even errors carry the CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    auth = [Depends(_auth_check(settings))]
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"], responses={503: {"description": "the engine is not running"}})
    app.add_api_route("/v1/models", models, methods=["GET"], dependencies=auth, responses=schema.errors(401))
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"], dependencies=auth,
                      openapi_extra=schema.chat_openapi(settings), responses=schema.CHAT_ANSWERS)  # fmt: skip
    app.add_api_route("/v1/audio/transcriptions", transcriptions, methods=["POST"], dependencies=auth,
                      openapi_extra=schema.transcription_openapi(settings),
                      responses=schema.TRANSCRIPTION_ANSWERS)  # fmt: skip
    return app


def _served(request: Request) -> Served:
    served = request.app.state.served
    assert isinstance(served, Served)
    return served


async def page() -> HTMLResponse:
    html = resources.files("speechllm.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html)


async def health(request: Request) -> JSONResponse:
    s = _served(request)
    ok = s.engine.ready
    body = {
        "status": "ok" if ok else "unavailable",
        "model": s.settings.model_name,
        "queued": s.engine.queued,
        "speech": s.speaks,  # the web page offers spoken answers only when the server can give them
    }
    return JSONResponse(body, status_code=200 if ok else 503)


async def models(request: Request) -> dict[str, Any]:
    s = _served(request)
    output = ["text", "audio"] if s.speaks else ["text"]
    card = {
        "object": "model",
        "created": 0,
        "owned_by": "speechllm",
        "modalities": {"input": ["text", "audio"], "output": output},
    }
    return {"object": "list", "data": [{"id": s.settings.model_name, **card}, {"id": "default", **card}]}


async def chat(request: Request) -> Response:
    s = _served(request)
    parsed = oa.parse_chat(
        oa.parse_json(await request.body()), s.settings, speech=s.speaks, transcript=s.transcripts.get
    )
    await run_in_threadpool(oa.decode_messages, parsed.messages, s.settings.max_audio_seconds)
    handle = await _submit(s.engine, parsed.messages, parsed.gen, s.settings, speak=parsed.audio is not None)
    cid = oa.completion_id()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    if not parsed.stream:
        try:
            done, chunks = await _collect(handle)
        finally:
            watcher.cancel()
        audio = None
        if parsed.audio is not None:
            aid = sp.audio_id()
            samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            expires = s.transcripts.remember(aid, done.text)
            audio = sp.message_audio(aid, samples, s.sample_rate, parsed.audio.format, done.text, expires)
        body = oa.completion(cid, s.settings.model_name, done.text, done.finish_reason, done.prompt_tokens,
                             done.completion_tokens, audio)  # fmt: skip
        return JSONResponse(body)
    events = handle.aevents()
    # Wait for the first event before answering 200, so errors before the first token (bad
    # audio, timeout in the queue) still get their proper status code.
    try:
        first = await _first(handle, events)
    finally:
        watcher.cancel()  # from here on, the streaming response notices a client that goes away
    voice = None
    if parsed.audio is not None:
        voice = sp.AudioDeltas(sp.audio_id(), s.sample_rate, s.transcripts.remember)
    return StreamingResponse(
        _sse(handle, events, first, cid, s.settings.model_name, parsed.include_usage, voice),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def transcriptions(request: Request) -> Response:
    s = _served(request)
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "a multipart field 'file' holding the audio is required", param="file")
    oa.check_model(form.get("model"), s.settings)
    fmt = form.get("response_format") or "json"
    if fmt not in ("json", "text"):
        raise ApiError(400, f"response_format must be 'json' or 'text', got {fmt!r}", param="response_format")
    data = await upload.read()
    limit = s.settings.max_audio_seconds
    audio = await run_in_threadpool(oa.decode_audio, data, upload.filename or "file", limit, limit)
    gen = GenerationConfig(max_new_tokens=s.settings.default_max_tokens)
    loop = asyncio.get_running_loop()
    handle = await _queued(lambda: s.engine.submit_transcription(audio, gen, timeout=s.settings.timeout, loop=loop))
    watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
    try:
        text = (await _collect(handle))[0].text.strip()
    finally:
        watcher.cancel()
    return PlainTextResponse(text) if fmt == "text" else JSONResponse({"text": text})


def _auth_check(settings: ServeSettings) -> Any:
    expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")

    return check


async def _submit(
    engine: Engine, messages: list[dict[str, Any]], gen: GenerationConfig, s: ServeSettings, speak: bool = False
) -> EngineRequest:
    """Queue a request; its prompt is measured in a worker thread (tokenizing a long text takes a while)."""
    loop = asyncio.get_running_loop()
    return await _queued(lambda: engine.submit(messages, gen, timeout=s.timeout, loop=loop, speak=speak))


async def _queued(submit: Callable[[], EngineRequest]) -> EngineRequest:
    """Run an engine submission in a worker thread; its refusals as HTTP errors."""
    try:
        return await run_in_threadpool(submit)
    except QueueFull:
        raise ApiError(
            429, "the server is busy: too many requests are waiting; retry later", code="queue_full"
        ) from None
    except EngineClosed:
        raise ApiError(503, "the server is not ready or is shutting down", code="unavailable") from None
    except PromptTooLong as e:
        raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
    except ValueError as e:  # the model's processor refused the conversation
        raise ApiError(400, str(e), param="messages", code="invalid_request") from None


async def _cancel_on_disconnect(request: Request, handle: EngineRequest, every: float = 0.1) -> None:
    """Cancel `handle` once the client has gone away (checked every `every` seconds until cancelled)."""
    while not handle.finished:
        if await request.is_disconnected():
            log.info("client went away: cancelling request %d", handle.id)
            handle.cancel()
            return
        await asyncio.sleep(every)


def _engine_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, RequestTimeout):
        return ApiError(504, "the request did not finish in time", code="timeout")
    if isinstance(e, EngineClosed):
        return ApiError(503, "the server is shutting down", code="unavailable")
    if isinstance(e, Cancelled):  # the client went away: nobody reads this answer
        return ApiError(499, "the client closed the request", code="cancelled")
    if isinstance(e, ValueError):  # the model refused the conversation (e.g. too long for it)
        return ApiError(400, str(e), code="invalid_request")
    log.error("generation failed", exc_info=e)
    return ApiError(500, "internal server error", code="internal_error")


async def _collect(handle: EngineRequest) -> tuple[Done, list[np.ndarray]]:
    """The Done of a request and its audio chunks (none unless it speaks)."""
    chunks: list[np.ndarray] = []
    try:
        async for event in handle.aevents():
            if isinstance(event, Audio):
                chunks.append(event.samples)
            elif isinstance(event, Done):
                return event, chunks
    except Exception as e:
        raise _engine_error(e) from None
    finally:
        handle.cancel()  # no-op once done; stops the row if the client went away
    raise AssertionError("the engine ended a request without Done")


async def _first(handle: EngineRequest, events: AsyncIterator[Delta | Audio | Done]) -> Delta | Audio | Done:
    try:
        return await anext(events)
    except Exception as e:
        handle.cancel()
        raise _engine_error(e) from None


async def _sse(
    handle: EngineRequest,
    events: AsyncIterator[Delta | Audio | Done],
    first: Delta | Audio | Done,
    cid: str,
    model: str,
    include_usage: bool,
    voice: sp.AudioDeltas | None = None,
) -> AsyncIterator[str]:
    """The chunks of one answer; spoken (`voice`), its text goes in `delta.audio.transcript` pieces."""
    try:
        yield oa.chunk(cid, model, voice.first() if voice else {"role": "assistant", "content": ""})
        event = first
        while True:
            if isinstance(event, Delta):
                yield oa.chunk(cid, model, voice.transcript(event.text) if voice else {"content": event.text})
            elif isinstance(event, Audio):
                assert voice is not None, "audio for a request that did not ask to speak"
                yield oa.chunk(cid, model, voice.data(event.samples))
            else:
                if voice is not None:
                    yield oa.chunk(cid, model, voice.end(event.text))
                yield oa.chunk(cid, model, {}, event.finish_reason)
                if include_usage:
                    yield oa.chunk(cid, model, None, usage=oa.usage(event.prompt_tokens, event.completion_tokens))
                break
            event = await anext(events)
    except Exception as e:  # after the 200 is sent, an error can only be reported in the stream
        yield oa.sse(api_error_body(_engine_error(e)))
    finally:
        handle.cancel()
    yield oa.sse("[DONE]")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(api_error_body(e), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else "request failed"
        return JSONResponse(error_body(e.status_code, message), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, "invalid request"), status_code=400)
