"""The speech judge (speechllm.speech_out.judge): Whisper's transcript against the words the voice says.

Offline and model-free: the transcripts are given, Whisper is faked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechllm.eval.metrics import wer
from speechllm.speech_out import compare
from speechllm.speech_out.judge import said_reference, spoken_wer


@pytest.mark.parametrize(
    ("text", "heard"),
    [
        ("1 + 1 = 2.", "1 plus 1 equals 2"),
        ("12 - 2 = 10", "12 minus 2 equals 10"),
        ("**Lion** is 10 * 60.", "Lion is 10 times 60."),
        ("The lion (Panthera leo) is big.", "The lion, Panthera leo, is big."),
        ("See [1] and (5).", "See 1 and 5."),
    ],
)
def test_what_the_voice_says_heard_right_is_no_error(text, heard):
    assert spoken_wer([text], [heard]) == 0.0


def test_the_written_text_as_reference_counted_spoken_signs_and_brackets_as_errors():
    # What the judge did before: Whisper's normaliser drops `+ =` and `(...)` from the written text.
    assert wer(["1 + 1 = 2."], ["1 plus 1 equals 2"]) == pytest.approx(2 / 3)
    assert wer(["The lion (Panthera leo) is big."], ["The lion Panthera leo is big."]) == pytest.approx(2 / 4)


def test_the_reference_is_the_spoken_words_without_brackets():
    assert said_reference("**Lion** (a big cat): 1 + 1 = 2.") == "Lion a big cat : 1 plus 1 equals 2."
    assert said_reference("") == ""


def test_a_transcript_writing_the_signs_scores_as_one_writing_the_words():
    assert spoken_wer(["1 + 1 = 2."], ["1 + 1 = 2"]) == 0.0
    assert spoken_wer(["One plus one equals two."], ["1 + 1 = 2"]) == 0.0


def test_a_wrong_transcript_still_counts():
    assert spoken_wer(["1 + 1 = 2."], ["1 plus 1 equals 3"]) == pytest.approx(1 / 4)
    assert spoken_wer(["The lion (Panthera leo)."], ["The lion."]) == pytest.approx(2 / 4)


class _Heard:
    """A stand-in for Whisper: every audio is heard as the same words."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, audio: np.ndarray) -> str:
        return self.text


def test_speech_eval_judges_against_the_spoken_words(monkeypatch, tmp_path):
    import speechllm.eval.whisper_asr as whisper_asr

    monkeypatch.setattr(whisper_asr, "WhisperTranscriber", lambda *a, **k: _Heard("1 plus 1 equals 2"))
    answer = compare.SpokenAnswer("a1", "1 + 1 = 2.", torch.tensor([1]), torch.zeros(1, 4), 0.1)
    voice = {"text_tts": lambda a: np.zeros(1600, dtype=np.float32)}
    figures = compare.intelligibility(voice, [answer], tmp_path)
    assert figures["wer_text_tts"] == 0.0
