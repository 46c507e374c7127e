"""How spoken answers are judged: Whisper's transcript of the speech against the words the voice says.

The reference is not the answer's text as written but the words the speech output says for it
(`spoken_words`, the function the voice itself speaks through): `**Lion**` is "Lion", `10 * 60`
"10 times 60", `1 + 1 = 2.` "1 plus 1 equals 2.". Brackets are silent and the words inside them are
said (eSpeak NG reads `(Panthera leo)` as "Panthera leo"), so they become spaces; Whisper's
normaliser would drop the words between them. The transcript is written as said in the same way, so
Whisper writing the signs ("1 + 1 = 2") or the words ("1 plus 1 equals 2") of the same speech scores
the same; then both go through Whisper's normalisation (`eval.metrics.wer`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from speechllm.eval.metrics import wer
from speechllm.speech_out.spoken_words import spoken_words

_BRACKETS = re.compile(r"[()\[\]<>]")
"""Silent in the voice; Whisper's normaliser drops `(...)`, `[...]` and `<...>` with the words inside."""


def said_reference(text: str) -> str:
    """The words the voice says for `text`: what a reference and a listener's transcript are compared as."""
    return " ".join(_BRACKETS.sub(" ", " ".join(spoken_words(text))).split())


def spoken_wer(texts: Sequence[str], heard: Sequence[str]) -> float:
    """Corpus WER of the transcripts `heard` against what the voice says for `texts`, both written as said
    (`said_reference`) and Whisper-normalised."""
    return wer([said_reference(t) for t in texts], [said_reference(h) for h in heard])
