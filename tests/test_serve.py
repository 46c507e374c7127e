"""The HTTP API on the tiny model through FastAPI's TestClient: formats, limits and every bad input."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from speechllm.inference.engine import Engine, asr_conversation
from speechllm.inference.generation import GenerationConfig, generate
from speechllm.serve.app import create_app
from speechllm.serve.settings import ServeSettings


def wav_bytes(audio: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def chat_body(parts_or_text, **extra) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": parts_or_text}], "max_tokens": 8, **extra}


@pytest.fixture()
def make_client(tiny_model):
    engines = []

    def make(start: bool = True, **settings) -> TestClient:
        s = ServeSettings(model_name="tiny", **settings)
        engine = Engine(tiny_model, max_batch=s.max_batch, max_queue=s.max_queue, start=start)
        engines.append(engine)
        return TestClient(create_app(engine, s))

    yield make
    for e in engines:
        e.close(timeout=5)


@pytest.fixture()
def client(make_client):
    return make_client()


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return error


def sse_events(response) -> list:
    """The data payloads of a server-sent-event body, parsed one by one."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_models_and_page(client):
    assert client.get("/health").json()["status"] == "ok"
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["tiny", "default"]
    page = client.get("/")
    assert page.status_code == 200 and "MediaRecorder" in page.text and "input_audio" in page.text


def test_chat_non_stream(client, tiny_model, tone):
    audio = tone()
    r = client.post(
        "/v1/chat/completions", json=chat_body([audio_part(wav_bytes(audio)), {"type": "text", "text": "Hi"}])
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["prompt_tokens"] > 10
    # the server decodes the WAV exactly (16-bit), so the answer matches the model on the same samples
    same = sf.read(io.BytesIO(wav_bytes(audio)), dtype="float32")[0]
    conv = [{"role": "user", "content": [{"type": "audio", "audio": same}, {"type": "text", "text": "Hi"}]}]
    assert choice["message"]["content"] == generate(tiny_model, [conv], GenerationConfig(max_new_tokens=8))[0]


def test_chat_stream_chunks(client, tone):
    body = chat_body([audio_part(wav_bytes(tone()))], stream=True, stream_options={"include_usage": True})
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 8
    final = chunks[-2]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] in ("stop", "length")
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    plain = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert "".join(deltas) == plain["choices"][0]["message"]["content"]


def test_stop_and_text_only(client):
    full = client.post("/v1/chat/completions", json=chat_body("Hello there", max_tokens=12)).json()
    text = full["choices"][0]["message"]["content"]
    assert len(text) >= 3
    cut = client.post("/v1/chat/completions", json=chat_body("Hello there", max_tokens=12, stop=[text[1:3]])).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(text[1:3])]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "default", "messages": []}, 400, "messages"),
        ({"model": "default"}, 400, "messages"),
        ({"model": "default", "messages": "hi"}, 400, "messages"),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"model": 3, "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            400,
            "messages[0].content[0].text",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ],
)
def test_bad_chat_requests(client, body, status, param):
    assert assert_error(client.post("/v1/chat/completions", json=body), status)["param"] == param


def test_bad_audio(client, tone):
    corrupt = {"type": "input_audio", "input_audio": {"data": "@@not base64@@", "format": "wav"}}
    assert_error(client.post("/v1/chat/completions", json=chat_body([corrupt])), 400, "invalid_base64")
    not_audio = audio_part(b"this is plain text, not a wav file at all")
    assert_error(client.post("/v1/chat/completions", json=chat_body([not_audio])), 400, "invalid_audio")
    empty = audio_part(b"")
    assert_error(client.post("/v1/chat/completions", json=chat_body([empty])), 400, "invalid_audio")
    flac = audio_part(wav_bytes(tone()), fmt="flac")
    assert_error(client.post("/v1/chat/completions", json=chat_body([flac])), 400)
    missing = {"type": "input_audio", "input_audio": {"format": "wav"}}
    assert_error(client.post("/v1/chat/completions", json=chat_body([missing])), 400)
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_json")
    assert_error(client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_audio_too_long_and_request_too_large(make_client, tone):
    client = make_client(max_audio_seconds=1.0, max_request_mb=0.2)
    long_audio = audio_part(wav_bytes(tone(1.5)))
    assert_error(client.post("/v1/chat/completions", json=chat_body([long_audio])), 400, "audio_too_long")
    two_halves = [audio_part(wav_bytes(tone(0.6))), audio_part(wav_bytes(tone(0.6, seed=1)))]
    assert_error(client.post("/v1/chat/completions", json=chat_body(two_halves)), 400, "audio_too_long")
    big = audio_part(wav_bytes(np.zeros(16000 * 10, dtype=np.float32)))  # 320 kB of WAV
    assert_error(client.post("/v1/chat/completions", json=chat_body([big])), 413, "request_too_large")

    def chunked():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"messages": "'
        for _ in range(30):
            yield b"x" * 10_000

    assert_error(client.post("/v1/chat/completions", content=chunked()), 413)
    files = {"file": ("big.wav", wav_bytes(np.zeros(16000 * 10, dtype=np.float32)), "audio/wav")}
    assert_error(client.post("/v1/audio/transcriptions", files=files, data={"model": "default"}), 413)


def test_api_key(make_client):
    client = make_client(api_key="s3cret")
    body = chat_body("hi")
    assert_error(client.post("/v1/chat/completions", json=body), 401, "invalid_api_key")
    assert_error(client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
    assert_error(client.get("/v1/models"), 401)
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/chat/completions", json=body, headers=ok).status_code == 200
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_cors_off_by_default_and_on_when_configured(make_client):
    origin = {"Origin": "https://example.org"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    off = make_client()
    assert "access-control-allow-origin" not in off.get("/v1/models", headers=origin).headers
    assert "access-control-allow-origin" not in off.options("/v1/chat/completions", headers=preflight).headers
    on = make_client(cors_origins=["https://example.org"])
    assert on.get("/v1/models", headers=origin).headers["access-control-allow-origin"] == "https://example.org"
    r = on.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://example.org"
    other = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in on.get("/v1/models", headers=other).headers


def test_queue_full_gives_429_and_not_ready_gives_503(make_client, tiny_model):
    release, entered = threading.Event(), threading.Event()
    prepare = tiny_model.prepare

    def blocked(conversations, **kw):
        entered.set()
        release.wait(10)
        return prepare(conversations, **kw)

    tiny_model.prepare = blocked
    client = make_client(max_queue=1, max_batch=1, timeout=20)
    engine = client.app.state.engine
    results: list = []

    def post() -> None:
        results.append(client.post("/v1/chat/completions", json=chat_body("hi")))

    threads = [threading.Thread(target=post) for _ in range(2)]
    try:
        threads[0].start()
        assert entered.wait(10)  # the worker holds the first request
        threads[1].start()
        for _ in range(500):  # the second one waits in the queue
            if engine.queued == 1:
                break
            release.wait(0.01)
        assert_error(client.post("/v1/chat/completions", json=chat_body("hi")), 429, "queue_full")
    finally:
        release.set()
        for t in threads:
            t.join(20)
        del tiny_model.prepare
    assert [r.status_code for r in results] == [200, 200]
    assert make_client(start=False).get("/health").status_code == 503
    engine.close()
    assert client.get("/health").status_code == 503
    assert_error(client.post("/v1/chat/completions", json=chat_body("hi")), 503, "unavailable")


def test_timeout_gives_504(make_client, tiny_model):
    release = threading.Event()
    prepare = tiny_model.prepare
    tiny_model.prepare = lambda conversations, **kw: (release.wait(5), prepare(conversations, **kw))[1]
    try:
        client = make_client(timeout=0.3)
        assert_error(client.post("/v1/chat/completions", json=chat_body("hi")), 504, "timeout")
        assert_error(client.post("/v1/chat/completions", json=chat_body("hi", stream=True)), 504, "timeout")
    finally:
        release.set()
        del tiny_model.prepare


def test_unexpected_error_is_a_generic_500(client, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals at /home/me")

    client.app.state.engine.submit = boom
    r = client.post("/v1/chat/completions", json=chat_body("hi"))
    assert_error(r, 500, "internal_error")
    assert "secret" not in r.text
    assert "secret internals" in caplog.text  # the traceback goes to the log only


def test_transcriptions(client, tiny_model, tone):
    data = wav_bytes(tone())
    same = sf.read(io.BytesIO(data), dtype="float32")[0]
    conv = asr_conversation(same)  # audio first, as the model was trained and as Engine.transcribe asks
    assert conv[0]["content"][0]["type"] == "audio"
    expected = generate(tiny_model, [conv], GenerationConfig(max_new_tokens=256))[0].strip()
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")}, data={"model": "default"})
    assert r.status_code == 200 and r.json() == {"text": expected}
    form = {"model": "tiny", "response_format": "text"}
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")}, data=form)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain") and r.text == expected
    bad = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.txt", b"hello", "text/plain")}, data={"model": "default"}
    )
    assert_error(bad, 400, "invalid_audio")
    assert_error(client.post("/v1/audio/transcriptions", data={"model": "default"}), 400)
    unknown = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data={"model": "whisper-1"})
    assert_error(unknown, 404, "model_not_found")
    fmt = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data={"response_format": "srt"})
    assert_error(fmt, 400)


def test_a_bridged_model_transcribes_with_what_its_llm_reads_through_the_queue(tiny_config, tone):
    from speechllm.config import BridgeConfig
    from speechllm.model import build_speech_llm

    tiny_config.adaptor.select = "blank_removal"
    tiny_config.bridge = BridgeConfig(mode="top1", blank_threshold=1.0)
    torch.manual_seed(0)
    model = build_speech_llm(tiny_config).eval()
    data = wav_bytes(tone())
    audio = sf.read(io.BytesIO(data), dtype="float32")[0]
    with torch.no_grad():
        heard = model.hear([audio])[0]
    calls = []
    hear = model.hear
    model.hear = lambda audios: calls.append(threading.current_thread().name) or hear(audios)  # type: ignore[method-assign]
    with Engine(model, max_batch=2, max_queue=4) as engine:
        done = engine.submit_transcription(audio).result()
        assert done.text == heard and done.completion_tokens == len(model.llm_token_paths([heard])[0])
        assert engine.transcribe([audio]) == [heard.strip()]
        r = TestClient(create_app(engine, ServeSettings(model_name="tiny"))).post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")}, data={"model": "tiny"}
        )
        assert r.status_code == 200 and r.json() == {"text": heard.strip()}
    assert calls == ["speechllm-engine"] * 3  # each transcription was answered by the engine's worker
