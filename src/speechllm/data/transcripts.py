"""Transcripts: what a sample's audio says, and transcripts of recordings of people made
comparable with a recognizer's output.

Training pairs each spoken sample with its text-only twin, and evaluation compares the answers to
both; the two build the twin here (`spoken_text`, `with_transcripts`).

Corpus transcripts mark what was not plainly said: `<cutoff-montreal>` (a word broken off),
`<hes-forced>` (a word said hesitantly), `<unk>`, `[laughter]`, `<VOCNOISE>`. A recognizer writes
the words it hears, so the reference keeps the plainly and hesitantly spoken words and drops the
rest (`clean_transcript`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from speechllm.data.manifest import Sample


def spoken_text(sample: Sample) -> str:
    """What the sample's (first) audio says: the question of an instruction, else the ASR target."""
    for key in ("question", "text", "transcript"):
        if isinstance(sample.meta.get(key), str):
            return str(sample.meta[key])
    if sample.task == "asr":
        return sample.target
    raise ValueError(f"{sample.id}: no transcript of its audio (meta.question / meta.text) and task is {sample.task!r}")


def with_transcripts(sample: Sample) -> list[dict[str, Any]]:
    """The sample's messages with its audio replaced by the text it speaks (the text-only twin)."""
    text = spoken_text(sample)
    out = []
    for m in sample.messages:
        content = m["content"]
        if isinstance(content, list):
            content = "\n".join(text if p.get("type") == "audio" else p["text"] for p in content)
        out.append({"role": m["role"], "content": content})
    return out


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
