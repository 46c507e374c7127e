"""Transcripts of recordings of people, made comparable with a recognizer's output.

Corpus transcripts mark what was not plainly said: `<cutoff-montreal>` (a word broken off),
`<hes-forced>` (a word said hesitantly), `<unk>`, `[laughter]`, `<VOCNOISE>`. A recognizer writes
the words it hears, so the reference keeps the plainly and hesitantly spoken words and drops the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_HESITATED = re.compile(r"<hes-([^<>\s]+)>", re.IGNORECASE)
_MARKUP = re.compile(r"<[^<>]*>|\[[^\[\]]*\]")


def clean_transcript(text: str) -> str:
    """Drop markup (`<cutoff-x>`, `<unk>`, `[laughter]` ...), keep hesitated words, collapse spaces.

    "montreal <hes-forced> aligner" -> "montreal forced aligner";
    "[laughter] montreal <cutoff-forced> forced <unk>" -> "montreal forced".
    """
    text = _HESITATED.sub(r"\1", text)
    text = _MARKUP.sub(" ", text)
    return " ".join(text.split())


def unique_transcripts(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(key, transcript) pairs without exact repeats of a transcript (case-insensitive): the first is kept.

    Many recordings of one phrase by one speaker say little more than one does, and would weigh
    that phrase in a corpus WER as often as they repeat.
    """
    seen: set[str] = set()
    out = []
    for key, transcript in items:
        folded = transcript.casefold()
        if folded not in seen:
            seen.add(folded)
            out.append((key, transcript))
    return out
