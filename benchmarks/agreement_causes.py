"""Why spoken and typed answers disagree: each held-out spoken question's transcript (what the LLM
read) against the typed question, by kind of difference, with how many answers agreed in each.

    python benchmarks/agreement_causes.py runs/recognizer/whisper-tiny.en_spoken_qa_30s_b5.jsonl \
        runs/heldout/bridge_tidy_qa/spoken_qa.jsonl

The first file is a transcript file of benchmarks/recognizer_variants.py (`reference` = the typed
question, `hypothesis` = Whisper's transcript, written as the LLM reads it after `bridge.tidy`), the
second the per-question rows of benchmarks/heldout_table.py for the same model (its answers).
Kinds, first that applies: exact; only case or punctuation; only British vs American spelling
(colour/color); only numbers written in digits ("2" for "two"); words misheard. A second table
counts by the typed question alone: whether it holds a form a recognizer writing as Whisper does
would write otherwise (a number word, or "colour"), and how many of each kind agree.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20", "thirty": "30",
    "forty": "40", "hundred": "100",
}  # fmt: skip


def words(text: str, *, spelling: bool = False, numbers: bool = False) -> list[str]:
    text = text.lower()
    if spelling:
        text = text.replace("colour", "color")
    out = re.sub(r"[^a-z0-9' ]", " ", text).split()
    return [NUMBER_WORDS.get(w, w) for w in out] if numbers else out


def kind(heard: str, typed: str) -> str:
    if heard == typed:
        return "exact"
    if words(heard) == words(typed):
        return "case or punctuation"
    if words(heard, spelling=True) == words(typed, spelling=True):
        return "spelling (colour/color)"
    if words(heard, numbers=True) == words(typed, numbers=True):
        return "numbers in digits"
    return "words misheard"


def styled(typed: str) -> bool:
    """Whether the typed question holds a form `words` rewrites as Whisper writes it: a number word
    (2 for two) or British "colour" (color)."""
    return words(typed) != words(typed, spelling=True, numbers=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transcripts", type=Path)
    parser.add_argument("answers", type=Path)
    args = parser.parse_args()
    from speechllm.eval.metrics import same_first_sentence
    from speechllm.model.bridge import tidy_transcript

    answers = {r["id"]: r for r in map(json.loads, args.answers.read_text().splitlines())}
    counts: dict[str, list[int]] = {}
    forms: dict[str, list[int]] = {}
    for r in map(json.loads, args.transcripts.read_text().splitlines()):
        a = answers[r["id"]]
        agree = int(same_first_sentence(a["hypothesis"], a["text_hypothesis"]))
        k = kind(tidy_transcript(r["hypothesis"]), r["reference"])
        f = "a number word or colour" if styled(r["reference"]) else "neither"
        for table, key in ((counts, k), (forms, f)):
            table.setdefault(key, [0, 0])
            table[key][0] += 1
            table[key][1] += agree
    for title, table in (("transcript vs typed question", counts), ("typed question holds", forms)):
        print(f"| {title} | questions | answers agreeing |\n|---|---|---|")
        for k, (n, agreeing) in sorted(table.items(), key=lambda kv: -kv[1][0]):
            print(f"| {k} | {n} | {agreeing} |")
        print()


if __name__ == "__main__":
    main()
