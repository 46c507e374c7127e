"""The web page in a real headless Chromium: record from a fake microphone (a WAV file), send, and
see the streamed answer land in the conversation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent (install Debian's chromium: apt-get install -y chromium)", allow_module_level=True
    )
sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
pytest.importorskip("uvicorn")

from speechllm.inference.engine import Engine  # noqa: E402
from speechllm.inference.generation import GenerationConfig, generate  # noqa: E402
from speechllm.serve.app import create_app  # noqa: E402
from speechllm.serve.background import serve_in_thread  # noqa: E402
from speechllm.serve.settings import ServeSettings  # noqa: E402


def chromium_args(mic_wav: Path) -> list[str]:
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
    ]


def test_record_send_and_see_the_answer(tiny_model, tone, tmp_path):
    mic = tmp_path / "mic.wav"
    sf.write(mic, tone(3.0), 16000, subtype="PCM_16")
    engine = Engine(tiny_model, max_batch=2, max_queue=4)
    answers: list = []
    submit = engine.submit

    def recording_submit(conversation, gen=None, **kw):
        request = submit(conversation, gen, **kw)
        answers.append((conversation, request))
        return request

    engine.submit = recording_submit  # type: ignore[method-assign]
    settings = ServeSettings(model_name="tiny", default_max_tokens=16)
    with engine, serve_in_thread(create_app(engine, settings)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=chromium_args(mic))
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.click("details summary")  # settings are folded away
            page.fill("#maxtokens", "12")
            page.click("#record")
            page.wait_for_timeout(1500)
            page.click("#record")
            page.wait_for_selector("#attachments .chip", timeout=15_000)
            page.fill("#text", "What did I say?")
            page.click("#send")
            done = page.wait_for_selector('.msg.assistant[data-state="done"]', timeout=60_000)
            shown = done.text_content()
            user = page.text_content(".msg.user")
            assert not errors, errors
        finally:
            browser.close()
    assert len(answers) == 1
    conversation, request = answers[0]  # the audio parts hold what the server decoded
    audio = [p["audio"] for p in conversation[-1]["content"] if p["type"] == "audio"]
    assert len(audio) == 1 and 1.0 < audio[0].shape[0] / 16000 < 3.5  # about the 1.5 s recorded
    assert request.finished and shown, "an answer should appear (the tiny model may answer whitespace)"
    assert (
        shown == generate(tiny_model, [conversation], GenerationConfig(max_new_tokens=12))[0]
    )  # the whole answer, streamed in
    assert "What did I say?" in user


def test_speak_toggle_plays_the_answer(tiny_model, tmp_path):
    from speechllm.inference.generation import GenerationConfig
    from test_speech_serving import make_speech_output, offline_speech

    speech = make_speech_output(tiny_model)
    mic = tmp_path / "mic.wav"
    sf.write(mic, np.zeros(1600, np.float32), 16000, subtype="PCM_16")
    engine = Engine(tiny_model, speech=speech, max_batch=2, max_queue=4)
    settings = ServeSettings(model_name="tiny")
    with engine, serve_in_thread(create_app(engine, settings)) as url, sync_playwright() as p:
        args = [*chromium_args(mic), "--autoplay-policy=no-user-gesture-required"]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("#speak:not([disabled])", timeout=10_000)  # the server said it can speak
            page.check("#speak")
            page.click("details summary")
            page.fill("#maxtokens", "12")
            page.fill("#text", "Say something.")
            page.click("#send")
            shown = page.wait_for_selector('.msg.assistant[data-state="done"]', timeout=60_000).text_content()
            played = page.evaluate(
                "({scheduled: speechllmAudio.scheduled, samples: speechllmAudio.samples,"
                " state: speechllmAudio.ctx.state, end: speechllmAudio.next})"
            )
            assert not errors, errors
        finally:
            browser.close()
    conversation = [{"role": "user", "content": [{"type": "text", "text": "Say something."}]}]
    _, expected = offline_speech(tiny_model, speech, conversation, GenerationConfig(max_new_tokens=12))
    assert shown == generate(tiny_model, [conversation], GenerationConfig(max_new_tokens=12))[0]  # the transcript
    pcm16_samples = round(expected.size * 24000 / 16000)  # pcm16 comes at 24 kHz
    assert played["scheduled"] >= 2 and played["samples"] == pcm16_samples  # every piece handed to Web Audio
    assert played["state"] == "running" and played["end"] >= expected.size / 16000  # queued one after another
