"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), plus a corpus
of bad audio: every answer is a documented 4xx or a 200, never a 500 or a hang.

Bounded for CI: `FUZZ_EXAMPLES` examples per operation and mode (positive: bodies the schema allows;
negative: bodies it forbids). With SPEECHLLM_FUZZ_REPORT=path the counts of requests and status
codes seen are written there (the README's figure).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import content_type_conformance, not_a_server_error, status_code_conformance  # noqa: E402

from speechllm.inference.engine import Engine  # noqa: E402
from speechllm.serve.app import create_app  # noqa: E402
from speechllm.serve.settings import ServeSettings  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("SPEECHLLM_FUZZ_EXAMPLES", "50"))
SETTINGS = dict(model_name="tiny", max_tokens_limit=4, timeout=30.0, max_request_mb=4.0, max_audio_seconds=30.0)
SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_app(tiny_llm_dir, tiny_whisper_dir):
    import torch

    from speechllm.config import AdaptorConfig, EncoderConfig, LLMConfig, SpeechLLMConfig
    from speechllm.model import build_speech_llm

    config = SpeechLLMConfig(
        encoder=EncoderConfig(source=str(tiny_whisper_dir)),
        llm=LLMConfig(source=str(tiny_llm_dir)),
        adaptor=AdaptorConfig(kind="mlp", hidden_dim=32),
    )
    torch.manual_seed(2)
    engine = Engine(build_speech_llm(config).eval(), max_batch=4, max_queue=16)
    yield create_app(engine, ServeSettings(**SETTINGS))
    engine.close(timeout=5)
    report = os.environ.get("SPEECHLLM_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({"requests": sum(SEEN.values()), "statuses": dict(sorted(SEEN.items()))}, f, indent=2)


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=FUZZ_EXAMPLES, deterministic=True
    )
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_answer_is_documented_and_no_server_error(case):
    t0 = time.monotonic()
    response = case.call()
    took = time.monotonic() - t0
    SEEN[f"{case.method} {case.path} {response.status_code}"] += 1
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance])
    assert took < 30, f"{case.method} {case.path} took {took:.1f} s"


# ---------------------------------------------------------------------- bad audio


def _wav(samples: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _bad_audio() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    good = _wav(speech)
    nan = speech.copy()
    nan[100:200] = np.nan
    claims_2gb = bytearray(good)
    claims_2gb[4:8] = struct.pack("<I", 2**31 - 1)  # RIFF size
    claims_2gb[40:44] = struct.pack("<I", 2**31 - 1)  # data chunk size
    flac = io.BytesIO()
    sf.write(flac, np.zeros(16000 * 3600, np.int16), 16000, format="FLAC")  # 1 hour of silence, ~100 KB
    return {
        "truncated": good[: len(good) // 3 + 7],
        "header_only": good[:44],
        "wrong_header": b"RIFX" + good[4:],
        "not_audio": b"hello, this is text" * 50,
        "zero_length": b"",
        "nan_floats": _wav(nan, subtype="FLOAT"),
        "8_bit": _wav(speech, 8000, "PCM_U8"),
        "6_channels": _wav(np.stack([speech] * 6, axis=1)),
        "hour_of_silence_flac": flac.getvalue(),
        "hour_of_silence_wav_8bit": _wav(np.zeros(8000 * 3600, np.float32), 8000, "PCM_U8"),  # 28.8 MB > 4 MB limit
        "claims_2gb": bytes(claims_2gb),
    }


BAD = _bad_audio()


@pytest.fixture(scope="module")
def client(fuzz_app):
    with TestClient(fuzz_app) as c:
        yield c


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_audio_gets_a_documented_answer(client, name):
    data = BAD[name]
    form = client.post("/v1/audio/transcriptions", files={"file": (f"{name}.wav", data)}, data={"model": "default"})
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [part]}], "max_tokens": 2}
    chat = client.post("/v1/chat/completions", json=body)
    for r in (form, chat):
        SEEN[f"bad audio {name} {r.status_code}"] += 1
        assert r.status_code in (200, 400, 413), f"{name}: {r.status_code} {r.text[:200]}"
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if name in ("8_bit", "6_channels"):  # valid audio, only unusual
        assert form.status_code == chat.status_code == 200
    if name.startswith("hour_of_silence") or name in ("zero_length", "nan_floats", "not_audio", "header_only"):
        assert form.status_code != 200 and chat.status_code != 200
