"""Spoken answers end to end on tiny random models: the engine's Audio events equal offline
synthesis, `speechllm chat --speak` writes a WAV, and the HTTP API speaks in OpenAI's layout."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from speechllm.data.audio import decode_audio_bytes, resample
from speechllm.inference.engine import Audio, Delta, Done, Engine
from speechllm.inference.generation import GenerationConfig, eos_token_ids, generate, stream_generate
from speechllm.model import save_pretrained
from speechllm.serve.speech import PCM16_RATE
from speechllm.speech_out.config import SpeechDecoderConfig, VocoderConfig
from speechllm.speech_out.decoder import SpeechDecoder
from speechllm.speech_out.streaming import SpeechOutput, StreamingConfig
from speechllm.speech_out.vocoder import UnitVocoder


def make_speech_output(model, first_chunk_units: int = 2, chunk_units: int = 3) -> SpeechOutput:
    """A tiny random speech output reading `model`'s LLM; small chunks so that short answers stream
    in several pieces."""
    torch.manual_seed(3)
    decoder = SpeechDecoder(
        SpeechDecoderConfig(
            llm_dim=model.llm.config.hidden_size,
            num_units=10,
            upsample=4,
            layers=1,
            dim=32,
            heads=2,
            ffn_dim=64,
            window=16,
        )
    )
    # The λ copies of a token get offsets as distinct as a trained decoder's: at their init scale
    # (0.02) a random decoder says one unit per token, which CTC collapses to ~1 unit per answer.
    decoder.sub_position.data.normal_(std=1.0)
    vocoder = UnitVocoder(VocoderConfig(num_units=10, dim=32, blocks=1, n_fft=640))
    return SpeechOutput(
        decoder, vocoder, model.llm.get_input_embeddings(), StreamingConfig(first_chunk_units, chunk_units)
    )


def offline_speech(model, speech: SpeechOutput, conversation, gen: GenerationConfig, voiced: int | None = None):
    """(tokens, audio): the answer's tokens (end of sequence dropped) and `speech.synthesize` of the
    first `voiced` of them (all when None), from a plain stream_generate run of the same batch."""
    hidden, tokens = [], []
    batch = model.prepare([conversation], left_pad=True)
    for step in stream_generate(model, batch, gen, on_hidden=lambda h: hidden.append(h[0].clone())):
        if int(step[0]) in eos_token_ids(model):
            break
        tokens.append(int(step[0]))
    n = len(tokens) if voiced is None else voiced
    return tokens, speech.synthesize(torch.stack(hidden[:n]), torch.tensor(tokens[:n]))


def _joined(events) -> np.ndarray:
    chunks = [e.samples for e in events if isinstance(e, Audio)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


SAY = [{"role": "user", "content": "Say something."}]
SAMPLED = GenerationConfig(max_new_tokens=24, do_sample=True, seed=0)
"""Seeded sampling: the tiny model's greedy answer is one repeated byte; this one varies (and holds
invalid UTF-8, so the engine defers tokens whose text is held back)."""


@pytest.fixture()
def speech(tiny_model):
    return make_speech_output(tiny_model)


# ---------------------------------------------------------------------- engine


def test_spoken_answer_streams_and_equals_offline_synthesis(tiny_model, speech):
    with Engine(tiny_model, speech=speech, max_batch=2) as engine:
        events = list(engine.submit(SAY, SAMPLED, speak=True).events())
    done = events[-1]
    assert isinstance(done, Done) and "".join(e.text for e in events if isinstance(e, Delta)) == done.text
    audio = [i for i, e in enumerate(events) if isinstance(e, Audio)]
    assert len(audio) >= 3, "small chunks: the answer should come in several pieces"
    last_text = max(i for i, e in enumerate(events) if isinstance(e, Delta))
    assert audio[0] < last_text, "audio should arrive while the text still streams, not only at the end"
    for i in audio:
        assert events[i].sample_rate == 16000 and events[i].samples.dtype == np.float32 and events[i].samples.size
    tokens, expected = offline_speech(tiny_model, speech, SAY, SAMPLED)
    assert done.completion_tokens == len(tokens) and expected.size > 0
    np.testing.assert_allclose(_joined(events), expected, atol=1e-5)


def test_stop_string_is_not_spoken(tiny_model, speech):
    full_tokens, _ = offline_speech(tiny_model, speech, SAY, SAMPLED)
    with Engine(tiny_model, speech=speech) as engine:
        full = engine.submit(SAY, SAMPLED).result().text
        # two printable ASCII characters after an ASCII one, so everything before them is shown text
        match = re.search(r"(?<=[\x00-\x7f])[!-~]{2}", full[1:])
        assert match, f"the sampled answer should hold two ASCII characters: {full!r}"
        stop = match.group()
        events = list(engine.submit(SAY, GenerationConfig(**{**SAMPLED.__dict__, "stop": [stop]}), speak=True).events())
    assert events[-1].text == full[: full.find(stop)] and events[-1].finish_reason == "stop"
    # One token per byte (the tiny tokenizer): the stop string's first byte is token `before`, and
    # every token before it (its text shown) is spoken; the stop string's tokens are not.
    decode = tiny_model.processor.decode
    completes = next(i for i in range(len(full_tokens)) if stop in decode(full_tokens[: i + 1]))
    before = completes - len(stop) + 1
    _, expected = offline_speech(tiny_model, speech, SAY, SAMPLED, voiced=before)
    np.testing.assert_allclose(_joined(events), expected, atol=1e-5)


def test_only_speaking_rows_get_audio_and_hidden_states_only_when_needed(tiny_model, speech):
    asked: list[bool] = []  # output_hidden_states of every LLM call

    def spy(module, args, kwargs):
        asked.append(bool(kwargs.get("output_hidden_states")))

    hook = tiny_model.llm.register_forward_pre_hook(spy, with_kwargs=True)
    gen = GenerationConfig(max_new_tokens=10)
    other = [{"role": "user", "content": "Tell me more."}]
    engine = Engine(tiny_model, speech=speech, max_batch=4, start=False)
    try:
        spoken, silent = engine.submit(SAY, gen, speak=True), engine.submit(other, gen)
        engine.start()  # both wait before the worker starts: one batch
        spoken_events, silent_events = list(spoken.events()), list(silent.events())
        together = len(asked)
        alone = engine.submit(other, gen).result()
    finally:
        hook.remove()
        engine.close()
    assert any(asked[:together]), "the speaking row needs the hidden states"
    assert not any(asked[together:]), "a batch where no row speaks never asks for them"
    assert any(isinstance(e, Audio) for e in spoken_events)
    assert not any(isinstance(e, Audio) for e in silent_events)
    assert silent_events[-1].text == alone.text


def test_speak_without_speech_output_is_refused(tiny_model):
    with Engine(tiny_model, start=False) as engine, pytest.raises(ValueError, match="speech output"):
        engine.submit(SAY, speak=True)


def test_speech_output_for_another_llm_is_refused(tiny_model):
    config = SpeechDecoderConfig(llm_dim=32, num_units=10, upsample=2, layers=1, dim=16, heads=2, ffn_dim=32)
    vocoder = UnitVocoder(VocoderConfig(num_units=10, dim=16, blocks=1, n_fft=640))
    other = SpeechOutput(SpeechDecoder(replace(config, token_embedding=False)), vocoder, None)
    with pytest.raises(ValueError, match="width 32, but this model's LLM gives 64"):
        Engine(tiny_model, speech=other, start=False)


# ---------------------------------------------------------------------- CLI


def test_chat_speak_writes_a_wav(tiny_model, speech, tmp_path, monkeypatch, capsys):
    import speechllm.cli.run as inference_cli
    import speechllm.defaults
    from speechllm.cli import main

    ckpt = save_pretrained(tiny_model, tmp_path / "ckpt")
    speech.save(tmp_path / "speech")
    played = []
    monkeypatch.setattr(inference_cli, "play", lambda path, audio, rate: played.append((path, audio.size, rate)))
    out = tmp_path / "answers" / "out.wav"
    argv = ["chat", "--model", str(ckpt), "--text", "Say something.", "--max-new-tokens", "12"]
    assert main([*argv, "--speech", str(tmp_path / "speech"), "--speak", str(out)]) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and info.frames > 0
    assert played == [(out, info.frames, 16000)]
    text = capsys.readouterr().out
    assert (
        text == generate(tiny_model, [SAY], GenerationConfig(max_new_tokens=12))[0] + "\n"
    )  # only the answer on stdout

    monkeypatch.setattr(speechllm.defaults, "DEFAULT_SPEECH", tmp_path / "not-shipped")
    assert main([*argv, "--speak", str(tmp_path / "x.wav")]) == 2
    assert "no speech output" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()
    # `serve`: --speech must load; without it, the embedded output if shipped, else text only
    assert inference_cli._serve_speech(tiny_model, None) is None
    monkeypatch.setattr(speechllm.defaults, "DEFAULT_SPEECH", tmp_path / "speech")
    assert isinstance(inference_cli._serve_speech(tiny_model, None), SpeechOutput)
    with pytest.raises(FileNotFoundError):
        inference_cli._serve_speech(tiny_model, str(tmp_path / "answers"))


# ---------------------------------------------------------------------- HTTP API

HI = [{"role": "user", "content": "Say something."}]
SPOKEN = {"modalities": ["text", "audio"], "audio": {"voice": "default", "format": "wav"}}


@pytest.fixture()
def make_client(tiny_model, speech):
    """Skips only the tests that use it when the serve extra (FastAPI) is missing."""
    testclient = pytest.importorskip("fastapi.testclient")
    from speechllm.serve.app import create_app
    from speechllm.serve.settings import ServeSettings

    engines = []

    def make(with_speech: bool = True):
        engine = Engine(tiny_model, speech=speech if with_speech else None, max_batch=2)
        engines.append(engine)
        return testclient.TestClient(create_app(engine, ServeSettings(model_name="tiny")))

    yield make
    for e in engines:
        e.close(timeout=5)


def _post(client, **body):
    return client.post("/v1/chat/completions", json={"model": "default", "messages": HI, "max_tokens": 12, **body})


def _sse(response) -> list:
    blocks = [b[len("data: ") :] for b in response.text.split("\n\n") if b.strip()]
    return [b if b == "[DONE]" else json.loads(b) for b in blocks]


def test_non_stream_speaks_wav_and_pcm16(make_client, tiny_model, speech):
    client = make_client()
    _, expected = offline_speech(tiny_model, speech, HI, GenerationConfig(max_new_tokens=12))
    text = _post(client).json()["choices"][0]["message"]["content"]
    body = _post(client, **SPOKEN).json()
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["role"] == "assistant"
    audio = message["audio"]
    assert set(audio) == {"id", "data", "expires_at", "transcript"} and audio["id"].startswith("audio_")
    assert audio["transcript"] == text and audio["expires_at"] > body["created"]
    data = base64.b64decode(audio["data"])
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, expected.size) and expected.size > 0
    decoded = decode_audio_bytes(data)
    np.testing.assert_allclose(decoded, np.clip(expected, -1, 1), atol=2 / 32767)

    pcm = _post(client, modalities=["text", "audio"], audio={"voice": "default", "format": "pcm16"}).json()
    raw = base64.b64decode(pcm["choices"][0]["message"]["audio"]["data"])
    samples = np.frombuffer(raw, dtype="<i2")
    expected24 = resample(expected, 16000, PCM16_RATE)  # pcm16 is 24 kHz, as OpenAI clients assume
    assert samples.size == expected24.size == round(expected.size * 1.5)
    np.testing.assert_allclose(samples / 32767, np.clip(expected24, -1, 1), atol=2 / 32767)


def test_stream_sends_transcript_and_pcm16_deltas(make_client, tiny_model, speech):
    client = make_client()
    _, expected = offline_speech(tiny_model, speech, HI, GenerationConfig(max_new_tokens=12))
    r = _post(client, stream=True, modalities=["text", "audio"], audio={"voice": "default", "format": "pcm16"})
    assert r.status_code == 200, r.text
    events = _sse(r)
    assert events[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in events[:-1]]
    assert deltas[0] == {"role": "assistant", "refusal": None} and deltas[-1] == {}
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    audio = [d["audio"] for d in deltas[1:-1]]
    assert all(d.get("content") is None for d in deltas)  # spoken: the text is the transcript
    aid = audio[0]["id"]
    assert audio[-1]["id"] == aid and "expires_at" in audio[-1] and "transcript" not in audio[-1]
    transcript = "".join(a.get("transcript", "") for a in audio)
    assert transcript == _post(client).json()["choices"][0]["message"]["content"]
    pieces = [np.frombuffer(base64.b64decode(a["data"]), dtype="<i2") for a in audio if "data" in a]
    # (a piece shorter than the resampler's delay, ~35 ms, comes out with the next one: here the first)
    assert sum(p.size > 0 for p in pieces) >= 2
    # One resampler per answer: the pieces join into exactly the offline 24 kHz resampling.
    expected24 = np.clip(resample(expected, 16000, PCM16_RATE), -1, 1)
    np.testing.assert_allclose(np.concatenate(pieces) / 32767, expected24, atol=2 / 32767)
    assert next(a.get("id") for a in audio if "data" in a) == aid


def test_an_earlier_spoken_answer_can_be_cited_by_id(make_client):
    client = make_client()
    audio = _post(client, **SPOKEN).json()["choices"][0]["message"]["audio"]
    turn = [*HI, {"role": "assistant", "audio": {"id": audio["id"]}}, {"role": "user", "content": "More."}]
    assert _post(client, messages=turn).status_code == 200
    turn[1] = {"role": "assistant", "audio": {"id": "audio_unknown"}}
    r = _post(client, messages=turn)
    assert r.status_code == 400 and r.json()["error"]["code"] == "audio_not_found"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio.voice"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "default", "format": "mp3"}}, "audio.format"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "default"}}, "audio.format"),
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "default", "format": "wav"}, "stream": True},
            "audio.format",
        ),
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"], "audio": "wav"}, "audio"),
        ({"modalities": ["video"]}, "modalities"),
        ({"modalities": "audio"}, "modalities"),
    ],
)
def test_bad_audio_output_requests(make_client, extra, param):
    r = _post(make_client(), **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_server_without_speech_refuses_audio_but_answers_text(make_client):
    client = make_client(with_speech=False)
    r = _post(client, **SPOKEN)
    assert r.status_code == 400 and r.json()["error"]["code"] == "audio_output_unavailable"
    assert _post(client, modalities=["text"]).json()["choices"][0]["message"]["content"] is not None
    assert client.get("/health").json()["speech"] is False
    assert client.get("/v1/models").json()["data"][0]["modalities"]["output"] == ["text"]
    spoken = make_client()
    assert spoken.get("/health").json()["speech"] is True
    assert spoken.get("/v1/models").json()["data"][0]["modalities"]["output"] == ["text", "audio"]
