"""The OpenAPI description of the request bodies and answers, for /openapi.json and for fuzzing.

The handlers parse bodies by hand (speechllm.serve.openai_api) so that every mistake gets an
OpenAI-style 400 naming its field; FastAPI therefore cannot infer the bodies, and they are written
out here. The limits come from the server's `ServeSettings`, so a property-based fuzzer that reads
this schema (tests/test_serve_fuzz.py, schemathesis) asks for what this server accepts, and every
status code a route can answer is listed with the OpenAI error body.
"""

from __future__ import annotations

from typing import Any

from speechllm.serve.openai_api import AUDIO_FORMATS, MAX_STOPS, ROLES
from speechllm.serve.settings import ServeSettings
from speechllm.serve.speech import FORMATS, MODALITIES, VOICES

ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_WHY = {
    400: "invalid request (the message names the field), unreadable audio, or a prompt too long for the context",
    401: "missing or wrong API key",
    404: "unknown model",
    413: "request body over the size limit",
    429: "too many requests waiting (retry later)",
    503: "the server is not ready or is shutting down",
    504: "the request did not finish before its deadline",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries of the given error statuses, each with the OpenAI error body."""
    return {s: {"description": _WHY[s], "content": {"application/json": {"schema": ERROR_BODY}}} for s in statuses}


def _text_part() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    }


def _audio_part() -> dict[str, Any]:
    audio = {
        "type": "object",
        "required": ["data", "format"],
        "properties": {"data": {"type": "string", "format": "byte"}, "format": {"enum": list(AUDIO_FORMATS)}},
    }
    return {
        "type": "object",
        "required": ["type", "input_audio"],
        "properties": {"type": {"const": "input_audio"}, "input_audio": audio},
    }


def chat_body(settings: ServeSettings) -> dict[str, Any]:
    """JSON schema of a /v1/chat/completions body this server accepts."""
    parts = {"type": "array", "minItems": 1, "items": {"oneOf": [_text_part(), _audio_part()]}}
    content = {"oneOf": [{"type": "string"}, parts]}
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"enum": sorted(ROLES)}, "content": content},
    }
    tokens = {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_limit}
    return {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "model": {"enum": ["default", settings.model_name]},
            "messages": {"type": "array", "minItems": 1, "items": message},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": tokens,
            "max_completion_tokens": tokens,
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "stop": {
                "oneOf": [{"type": "string"}, {"type": "array", "maxItems": MAX_STOPS, "items": {"type": "string"}}]
            },
            "seed": {"type": "integer"},
            "n": {"const": 1},
            "modalities": {"type": "array", "minItems": 1, "items": {"enum": list(MODALITIES)}},
            "audio": {
                "type": "object",
                "required": ["voice", "format"],
                "properties": {"voice": {"enum": list(VOICES)}, "format": {"enum": list(FORMATS)}},
            },
        },
    }


def chat_openapi(settings: ServeSettings) -> dict[str, Any]:
    """`openapi_extra` of the chat route: its request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": chat_body(settings)}}}}


def transcription_openapi(settings: ServeSettings) -> dict[str, Any]:
    """`openapi_extra` of the transcription route: a multipart form with the audio file."""
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "model": {"enum": ["default", settings.model_name]},
            "response_format": {"enum": ["json", "text"]},
        },
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


CHAT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a chat.completion, or server-sent chat.completion.chunk events when `stream` is true",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}},
    },
    **errors(400, 401, 404, 413, 429, 503, 504),
}
TRANSCRIPTION_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '{"text": ...}, or the bare text with response_format "text"',
        "content": {"application/json": {"schema": {"type": "object"}}, "text/plain": {"schema": {"type": "string"}}},
    },
    **errors(400, 401, 404, 413, 429, 503, 504),
}
