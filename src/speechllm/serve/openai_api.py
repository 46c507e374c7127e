"""The OpenAI wire format: chat requests in (checked field by field), completions and chunks out.

Parsing is by hand rather than through pydantic models so that every mistake gets an OpenAI-style
400 naming the offending field (`param`), instead of FastAPI's own 422 layout.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from speechllm.config import SAMPLE_RATE
from speechllm.data.audio import AudioError, decode_audio_bytes
from speechllm.inference.generation import GenerationConfig
from speechllm.serve.errors import ApiError
from speechllm.serve.settings import ServeSettings
from speechllm.serve.speech import AudioOutput, parse_audio_output

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
AUDIO_FORMATS = ("wav", "mp3")
MAX_STOPS = 4


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    """Messages whose input_audio parts still hold the undecoded bytes (see `decode_audio`)."""
    gen: GenerationConfig
    stream: bool
    include_usage: bool
    audio: AudioOutput | None = None
    """How to speak the answer; None: text only."""


def check_model(value: Any, settings: ServeSettings) -> None:
    """`default`, the served model's id, or nothing; anything else is 404 model_not_found."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ApiError(400, f"'model' must be a string, got {type(value).__name__}", param="model")
    if value not in ("default", settings.model_name):
        raise ApiError(
            404,
            f"the model {value!r} does not exist; this server serves {settings.model_name!r} (also called 'default')",
            param="model",
            code="model_not_found",
        )


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


Transcript = Callable[[str], str | None]
"""The text of an earlier spoken answer by its audio id (None when unknown or expired)."""


def parse_chat(
    data: dict[str, Any], settings: ServeSettings, *, speech: bool = False, transcript: Transcript | None = None
) -> ChatRequest:
    """`speech`: whether the server can speak answers; `transcript` resolves assistant messages
    that cite an earlier spoken answer as {"audio": {"id": ...}}."""
    check_model(data.get("model"), settings)
    messages = _messages(data.get("messages"), transcript)
    stream = _typed(data, "stream", bool, False)
    options = _typed(data, "stream_options", dict, None) or {}
    n = _typed(data, "n", int, 1)
    if n != 1:
        raise ApiError(400, f"only n=1 is supported, got {n}", param="n")
    audio = parse_audio_output(data, stream=stream, available=speech)
    return ChatRequest(messages, _generation(data, settings), stream, bool(options.get("include_usage")), audio)


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(key)
    if value is None:
        return default
    # bool is an int in Python but not a number in JSON requests
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(400, f"'{key}' must be {names}, got {type(value).__name__}", param=key)
    return value


def _generation(data: dict[str, Any], settings: ServeSettings) -> GenerationConfig:
    max_tokens = _typed(data, "max_completion_tokens", int, None)
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _typed(data, "max_tokens", int, settings.default_max_tokens), "max_tokens"
    if not 1 <= max_tokens <= settings.max_tokens_limit:
        raise ApiError(400, f"'{key}' must be in 1..{settings.max_tokens_limit}, got {max_tokens}", param=key)
    # Greedy unless a positive temperature is asked for: a small model answers best without sampling.
    temperature = float(_typed(data, "temperature", (int, float), 0.0))
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"'temperature' must be in [0, 2], got {temperature}", param="temperature")
    top_p = float(_typed(data, "top_p", (int, float), 1.0))
    if not 0 < top_p <= 1:
        raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    stop = data.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOPS} strings", param="stop")
    seed = _typed(data, "seed", int, None)
    return GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p,
        stop=[s for s in stops if s],
        seed=seed,
    )


def _messages(value: Any, transcript: Transcript | None) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ApiError(400, f"'messages' must be a list, got {type(value).__name__}", param="messages")
    if not value:
        raise ApiError(400, "'messages' must hold at least one message", param="messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object, got {type(m).__name__}", param=where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {sorted(ROLES)}, got {role!r}", param=f"{where}.role")
        if role == "assistant" and m.get("content") is None and "audio" in m:
            out.append({"role": "assistant", "content": _cited_audio(m["audio"], where, transcript)})
            continue
        out.append({"role": ROLES[role], "content": _content(m.get("content"), f"{where}.content")})
    if out[-1]["role"] == "assistant":
        raise ApiError(
            400, "the last message must not be the assistant's: there is nothing to answer", param="messages"
        )
    return out


def _cited_audio(audio: Any, where: str, transcript: Transcript | None) -> str:
    """An assistant turn given as an earlier spoken answer's id: its transcript."""
    aid = audio.get("id") if isinstance(audio, dict) else None
    if not isinstance(aid, str):
        raise ApiError(400, f"{where}.audio must be an object with a string 'id'", param=f"{where}.audio.id")
    text = transcript(aid) if transcript is not None else None
    if text is None:
        raise ApiError(
            400,
            f"{where}.audio.id {aid!r} is not a spoken answer of this server, or it has expired",
            param=f"{where}.audio.id",
            code="audio_not_found",
        )
    return text


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"{where} must be a string or a non-empty list of parts", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{at}.text must be a string", param=f"{at}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_audio":
            parts.append({"type": "audio", "audio": _audio_bytes(part.get("input_audio"), f"{at}.input_audio")})
        else:
            raise ApiError(
                400, f"{at}: unsupported content part type {kind!r}; expected 'text' or 'input_audio'", param=at
            )
    return parts


def _audio_bytes(spec: Any, where: str) -> bytes:
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise ApiError(400, f"{where} must be an object with a base64 string 'data'", param=f"{where}.data")
    fmt = spec.get("format")
    if fmt not in AUDIO_FORMATS:
        raise ApiError(
            400, f"{where}.format must be one of {list(AUDIO_FORMATS)}, got {fmt!r}", param=f"{where}.format"
        )
    try:
        return base64.b64decode(spec["data"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}.data is not valid base64", param=f"{where}.data", code="invalid_base64") from None


def decode_audio(data: bytes, name: str, budget_s: float, limit_s: float) -> np.ndarray:
    """Decode one upload with at most `budget_s` seconds left of the request's `limit_s`; 400 otherwise."""
    try:
        return decode_audio_bytes(data, max_seconds=budget_s, name=name)
    except AudioError as e:
        if "beyond the limit" in str(e):
            raise ApiError(
                400,
                f"{name}: the audio of a request may last at most {limit_s:g} s in all",
                param=name,
                code="audio_too_long",
            ) from None
        raise ApiError(400, f"{name}: not a readable audio file", param=name, code="invalid_audio") from None


def decode_messages(messages: list[dict[str, Any]], limit_s: float) -> list[dict[str, Any]]:
    """The messages with every audio part decoded to 16 kHz float32 (in place); total within `limit_s`."""
    budget = limit_s
    for i, m in enumerate(messages):
        if isinstance(m["content"], str):
            continue
        for j, part in enumerate(m["content"]):
            if part["type"] == "audio":
                audio = decode_audio(part["audio"], f"messages[{i}].content[{j}].input_audio", budget, limit_s)
                budget -= audio.shape[0] / SAMPLE_RATE
                part["audio"] = audio
    return messages


# ---------------------------------------------------------------------- responses


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(
    cid: str, model: str, text: str, finish: str, prompt: int, generated: int, audio: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A chat.completion; with `audio` (see speech.message_audio) the text is its transcript and
    `content` is null, as OpenAI answers."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if audio is not None:
        message = {"role": "assistant", "content": None, "refusal": None, "audio": audio}
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt, generated),
    }


def usage(prompt: int, generated: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def chunk(cid: str, model: str, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
    """One server-sent event holding a chat.completion.chunk (no choice when `delta` is None)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    return sse({**body, "choices": choices, **extra})


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"
