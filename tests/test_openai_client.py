"""The official openai client, unchanged, against the server (uvicorn on loopback, tiny model)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from speechllm.inference.engine import Engine  # noqa: E402
from speechllm.serve.app import create_app  # noqa: E402
from speechllm.serve.background import serve_in_thread  # noqa: E402
from speechllm.serve.settings import ServeSettings  # noqa: E402
from speechllm.serve.speech import PCM16_RATE  # noqa: E402


@pytest.fixture()
def client(tiny_model):
    settings = ServeSettings(model_name="tiny", api_key="k")
    with Engine(tiny_model, max_batch=4, max_queue=8) as engine, serve_in_thread(create_app(engine, settings)) as url:
        assert url.startswith("http://127.0.0.1:")
        yield openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)


def test_chat_stream_and_non_stream_with_audio(client, tone):
    buf = io.BytesIO()
    sf.write(buf, tone(), 16000, format="WAV", subtype="PCM_16")
    data = base64.b64encode(buf.getvalue()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                {"type": "text", "text": "What is said?"},
            ],
        }
    ]
    full = client.chat.completions.create(model="default", messages=messages, max_tokens=10)
    answer = full.choices[0].message.content
    assert full.object == "chat.completion" and full.model == "tiny" and full.usage.completion_tokens <= 10
    assert full.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == answer
    assert reasons[-1] in ("stop", "length") and usage is not None and usage.total_tokens > 0


def test_transcription_models_and_errors(client, tone):
    buf = io.BytesIO()
    sf.write(buf, tone(), 16000, format="WAV", subtype="PCM_16")
    result = client.audio.transcriptions.create(model="default", file=("q.wav", buf.getvalue(), "audio/wav"))
    assert isinstance(result.text, str)
    assert [m.id for m in client.models.list()] == ["tiny", "default"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="default", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).models.list()


def test_spoken_answers_parse_as_openai_types(tiny_model):
    from speechllm.data.audio import decode_audio_bytes
    from test_speech_serving import make_speech_output

    settings = ServeSettings(model_name="tiny")
    engine = Engine(tiny_model, speech=make_speech_output(tiny_model), max_batch=2)
    with engine, serve_in_thread(create_app(engine, settings)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Say something."}]
        spoken = dict(model="default", messages=messages, max_tokens=10, modalities=["text", "audio"])
        full = client.chat.completions.create(**spoken, audio={"voice": "default", "format": "wav"})
        message = full.choices[0].message
        assert isinstance(message.audio, openai.types.chat.ChatCompletionAudio) and message.content is None
        wav = decode_audio_bytes(base64.b64decode(message.audio.data))
        assert wav.dtype == np.float32 and wav.size > 0
        text = client.chat.completions.create(model="default", messages=messages, max_tokens=10)
        assert message.audio.transcript == text.choices[0].message.content

        stream = client.chat.completions.create(**spoken, audio={"voice": "default", "format": "pcm16"}, stream=True)
        transcript, pcm, ids = "", b"", set()
        for chunk in stream:
            for choice in chunk.choices:
                audio = choice.delta.audio
                if audio is None:
                    continue
                if audio.id:
                    ids.add(audio.id)
                transcript += audio.transcript or ""
                pcm += base64.b64decode(audio.data) if audio.data else b""
        pcm_samples = round(wav.size * PCM16_RATE / 16000)  # pcm16 comes at 24 kHz, the WAV at 16 kHz
        assert transcript == message.audio.transcript and len(pcm) == 2 * pcm_samples and len(ids) == 1

        follow_up = [
            *messages,
            {"role": "assistant", "audio": {"id": message.audio.id}},
            {"role": "user", "content": "And?"},
        ]
        assert client.chat.completions.create(model="default", messages=follow_up, max_tokens=4).choices
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**spoken, audio={"voice": "alloy", "format": "wav"})
        assert e.value.body["param"] == "audio.voice"
