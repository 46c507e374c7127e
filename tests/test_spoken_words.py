"""Written words -> the words the voice says (speechllm.speech_out.spoken_words)."""

from __future__ import annotations

import pytest

from speechllm.speech_out.spoken_words import spoken_word, spoken_words


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("The answer is: **Lion**", ["The", "answer", "is:", "Lion"]),
        ("**Lion**.", ["Lion."]),
        ("10 * 60 = 600", ["10", "times", "60", "=", "600"]),
        ("5 x 5", ["5", "times", "5"]),
        ("12 - 2 = 10", ["12", "minus", "2", "=", "10"]),
        ("Paris - the city", ["Paris", "the", "city"]),
        ("### Steps\n* one `step`", ["Steps", "one", "step"]),
        ("#1 pick, x is 5", ["1", "pick,", "x", "is", "5"]),
        ("don't stop 3.14", ["don't", "stop", "3.14"]),
    ],
)
def test_spoken_words(text, said):
    assert spoken_words(text) == said


def test_a_word_is_said_from_itself_and_the_word_before_it_only():
    assert spoken_word("*", previous="10") == "times" and spoken_word("*", previous="") == ""
    assert spoken_word("-", previous="(5)") == "minus" and spoken_word("-", previous="Paris") == ""
