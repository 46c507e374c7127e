"""The HTTP server on a real socket with the tiny model: clients that go away, prompts too long for
the context, recovery after abuse, and `speechllm serve` itself with an API key."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
import httpx

from conftest import LLMCalls, wait_until
from speechllm.inference.engine import Engine
from speechllm.model import save_pretrained
from speechllm.serve.app import create_app
from speechllm.serve.background import free_port, serve_in_thread
from speechllm.serve.settings import ServeSettings

LONG = 800  # new tokens: ~8 s at the 10 ms per step the tests slow the model to


def chat(text: str, max_tokens: int, **extra) -> dict:
    return {"model": "default", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, **extra}


@pytest.fixture()
def server(tiny_model):
    """(base URL, engine, LLM calls) of a live server whose model takes 10 ms per LLM call."""
    calls = LLMCalls(tiny_model, delay=0.01)
    engine = Engine(tiny_model, max_batch=2, max_queue=32)
    try:
        with serve_in_thread(create_app(engine, ServeSettings(model_name="tiny", max_queue=32))) as url:
            yield url, engine, calls
    finally:
        engine.close(timeout=2)
        calls.remove()


def test_client_dropping_a_stream_cancels_its_request(server):
    url, engine, calls = server
    body = chat("Go on.", LONG, stream=True)
    with (
        httpx.Client(base_url=url, timeout=30, trust_env=False) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        while '"content": ""' in (line := next(lines)) or not line.startswith("data: "):
            pass  # the role chunk; stop at the first token's chunk
    # leaving the block closed the connection mid-answer
    wait_until(lambda: engine.running == 0, 3.0)
    steps = len(calls.decode_rows())
    assert steps < LONG // 4, f"the dropped stream went on for {steps} steps"


def test_client_dropping_a_plain_request_cancels_it_and_frees_the_slot(server):
    url, engine, calls = server
    with httpx.Client(base_url=url, timeout=0.5, trust_env=False) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=chat("Go on.", LONG))
    wait_until(lambda: engine.running == 0, 3.0)
    assert len(calls.decode_rows()) < LONG // 4
    r = httpx.post(f"{url}/v1/chat/completions", json=chat("Hi", 3), timeout=10, trust_env=False)
    assert r.status_code == 200


def test_over_long_prompts_get_400_at_once(server):
    url, _, calls = server
    words = " ".join(["lorem", "ipsum", "dolor"] * 20_000)
    t0 = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(words, 16), timeout=30, trust_env=False)
    assert r.status_code == 400 and time.monotonic() - t0 < 2.0
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and "1024" in error["message"]
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000 * 90, np.float32), 16000, format="WAV", subtype="PCM_16")  # ~1125 positions
    r = httpx.post(
        f"{url}/v1/audio/transcriptions", files={"file": ("long.wav", buf.getvalue())}, timeout=30, trust_env=False
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert not calls.calls, "nothing reached the LLM"


def test_after_abuse_short_requests_are_served_as_on_an_idle_server(server):
    """The issue's scenario: a 60,000-word prompt and five dropped streams, then 12 short requests."""
    url, engine, _ = server

    async def scenario() -> tuple[float, float, list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as http:
            t0 = time.monotonic()
            assert (await http.post("/v1/chat/completions", json=chat("Hi", 8))).status_code == 200
            idle = time.monotonic() - t0
            words = " ".join(["lorem"] * 60_000)
            assert (await http.post("/v1/chat/completions", json=chat(words, 16))).status_code == 400
            for _ in range(5):
                async with http.stream("POST", "/v1/chat/completions", json=chat("Go on.", LONG, stream=True)) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and '"content": ""' not in line:
                            break
            wait_until(lambda: engine.running == 0, 3.0)
            t0 = time.monotonic()
            replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=chat("Hi", 8)) for _ in range(12)))
            t1 = time.monotonic()
            assert (await http.post("/v1/chat/completions", json=chat("Hi", 8))).status_code == 200
            after = time.monotonic() - t1
            return idle, after, [r.status_code for r in replies]

    idle, after, statuses = asyncio.run(scenario())
    assert statuses == [200] * 12
    assert after < 3 * idle + 0.5, f"a short request took {after:.2f} s after the abuse, {idle:.2f} s idle"


def test_speechllm_serve_with_an_api_key(tiny_model, tmp_path):
    ckpt = save_pretrained(tiny_model, tmp_path / "ckpt")
    port = free_port()
    env = {**os.environ, "SPEECHLLM_API_KEY": "s3cret", "NO_PROXY": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "speechllm.cli", "serve", "--model", str(ckpt), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "exited"
            try:
                if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "speechllm serve did not become healthy in 120 s"
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
            assert http.get("/v1/models").status_code == 401
            wrong = http.post("/v1/chat/completions", json=chat("Hi", 2), headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
            key = {"Authorization": "Bearer s3cret"}
            assert http.get("/v1/models", headers=key).status_code == 200
            r = http.post("/v1/chat/completions", json=chat("Hi", 2), headers=key)
            assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    finally:
        proc.terminate()
        proc.wait(30)
