"""Summarise `speechllm speech eval` per-answer files: WER of every path (against the words the voice
says, `speech_out.judge`) over all answers, over the answers the judge can score (English, not a
repetition loop), and the median per-answer WER.

    python benchmarks/speech_eval_table.py runs/speech/eval_phonemes

Why the subset: the default model answers some held-out spoken questions with a loop ("Ivor, Ivor,
Ivor, ...") or in another language; Whisper tiny.en then hallucinates long insertions on any voice,
so a handful of answers decide the corpus WER of every path alike (WER can exceed 100% per answer).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from speechllm.speech_out.judge import spoken_wer


def judgeable(text: str) -> bool:
    """English letters only, and not a loop: at least half of the words are distinct."""
    words = re.findall(r"[\w']+", text.lower())
    return bool(words) and text.isascii() and len(set(words)) >= 0.5 * len(words)


def main() -> None:
    out = Path(sys.argv[1])
    table = {}
    for path in sorted(out.glob("per_answer.*.jsonl")):
        name = path.name.split(".")[1]
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [r for r in rows if judgeable(r["text"])]
        table[name] = {
            "answers": len(rows),
            "wer_all": spoken_wer([r["text"] for r in rows], [r[name] for r in rows]),
            "judgeable": len(kept),
            "wer_judgeable": spoken_wer([r["text"] for r in kept], [r[name] for r in kept]),
            "median_answer_wer": float(np.median([spoken_wer([r["text"]], [r[name]]) for r in rows])),
        }
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
