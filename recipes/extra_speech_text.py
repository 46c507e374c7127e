"""More text for the speech output's training: plain English sentences from three BIG-bench tasks.

    pip download bigbench==1.0.0 --no-deps --no-binary :all: -d /tmp/bb     # 358 MB, Apache-2.0
    python recipes/extra_speech_text.py --sdist /tmp/bb/bigbench-1.0.0.tar.gz --out data_out/extra_text.txt

The speech decoder and the vocoder are data-limited on the shipped text alone (1.1 h of speech:
the decoder's dev unit error rate stops falling after 1,500 steps while its train loss keeps
falling), so `recipes/default_speech_data.py --extra-text` adds these sentences to the train set:
- disfl_qa: sentences of the SQuAD (Wikipedia) paragraphs given as context, detokenised;
- qa_wikidata: each prompt completed with its first target ("The capital of France is Paris.");
- understanding_fables: sentences of the fables.
Kept: letters, digits and basic punctuation only, 6-22 words, ending in '.', no all-caps word
(acronyms that a TTS voice spells), no one-letter last word ("... by John F."); deduplicated,
shuffled with a fixed seed. Nothing here is a test set of ours: the speech test text is untouched.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

TASKS = ("disfl_qa", "qa_wikidata", "understanding_fables")
ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:'\-?!]+$")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def detokenise(text: str) -> str:
    """Undo SQuAD-style tokenisation: `Earth ' s atmosphere ( see Occurrence ) .` -> natural text."""
    text = re.sub(r"\s+' s\b", "'s", text)
    text = re.sub(r"\s+([,.;:!?%)])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    text = re.sub(r"\s+-\s+", "-", text)
    return re.sub(r"\s+", " ", text).strip()


def keep(sentence: str, min_words: int = 6, max_words: int = 22) -> bool:
    words = sentence.split()
    if not (min_words <= len(words) <= max_words) or not sentence.endswith("."):
        return False
    if not ALLOWED.match(sentence):
        return False
    if words[0].endswith(".") or not words[0][0].isupper():  # a fragment ("S. city ...")
        return False
    if any(len(w.strip(".,;:'")) > 1 and w.strip(".,;:'").isupper() for w in words):
        return False
    last = words[-1].rstrip(".")
    return len(last) > 1  # no trailing initial ("... by John F.") or cut-off target ("... is p.")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def task_examples(sdist: Path, tasks: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(task, example) for each example of the named tasks, read from the sdist without unpacking it."""
    wanted = {f"bigbench/benchmark_tasks/{t}/task.json": t for t in tasks}
    found = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            key = member.name.split("/", 1)[-1]
            if key not in wanted:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                raise ValueError(f"{sdist}: {member.name} is not a regular file")
            found.add(wanted[key])
            for example in json.load(handle)["examples"]:
                yield wanted[key], example
    missing = set(wanted.values()) - found
    if missing:
        raise ValueError(f"{sdist}: no task.json for {sorted(missing)}; is this the bigbench 1.0.0 sdist?")


def sentences_of(task: str, example: dict) -> list[str]:
    text = example["input"]
    if task == "disfl_qa":
        _, _, context = text.partition("context:")
        return split_sentences(detokenise(context))
    if task == "qa_wikidata":
        targets = example.get("target") or []
        if not targets:
            return []
        return [f"{text.strip()} {targets[0].strip()}."]
    if task == "understanding_fables":
        story = text.rsplit("What is the moral", 1)[0]
        return split_sentences(story)
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, required=True, help="bigbench-1.0.0.tar.gz")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wikidata", type=int, default=3000, help="how many qa_wikidata sentences to keep")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not args.sdist.is_file():
        raise SystemExit(f"{args.sdist} does not exist; see the command at the top of this file")
    per_task: dict[str, dict[str, None]] = {t: {} for t in TASKS}  # ordered sets
    for task, example in task_examples(args.sdist, TASKS):
        for s in sentences_of(task, example):
            if keep(s):
                per_task[task][s] = None
    rng = random.Random(args.seed)
    wikidata = list(per_task["qa_wikidata"])
    rng.shuffle(wikidata)
    lines = list(per_task["disfl_qa"]) + wikidata[: args.wikidata] + list(per_task["understanding_fables"])
    rng.shuffle(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    counts = ", ".join(f"{t} {len(v)}" for t, v in per_task.items())
    print(f"{args.out}: {len(lines)} sentences (kept per task: {counts}; qa_wikidata capped at {args.wikidata})")


if __name__ == "__main__":
    main()
