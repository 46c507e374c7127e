"""The LLM's own answers, for training the phoneme speech decoder on what it will really voice.

    OMP_NUM_THREADS=1 python recipes/default_speech_answers.py --out data_out/speech_phonemes/answers

The default model answers, by greedy decoding from text prompts (`--max-new-tokens`, 64):
- test.jsonl: the held-out shipped questions 1-100 (the spoken questions of `speechllm speech eval`);
- train.jsonl: shipped questions 101-619 interleaved with the shipped sentences 1-1,200, each
  wrapped in one of a few request templates (more varied answers than the 519 questions alone);
- references.jsonl (no generation): the shipped reference texts of the same train split, which the
  decoder may also read (`--answers train.jsonl references.jsonl`) for more phoneme coverage.
One JSON line per answer ({"id", "question", "answer"}); a re-run resumes after the last written batch.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from speechllm.data.builders import read_questions, read_sentences, shipped_text
from speechllm.speech_out.answers import SAY_PROMPT

N_TEST_QUESTIONS = 100
N_TRAIN_SENTENCES = 1200
TEMPLATES = (
    "Tell me about this: {}",
    "Explain this in simple words: {}",
    "What do you think of this? {}",
    "Say this in your own words: {}",
)


def prompts() -> dict[str, list[tuple[str, str]]]:
    """Split name -> (id, prompt) pairs."""
    questions = read_questions(shipped_text("questions.jsonl"))
    sentences = read_sentences(shipped_text("sentences.txt"))[:N_TRAIN_SENTENCES]
    test = [(q.id, q.question) for q in questions[:N_TEST_QUESTIONS]]
    asked = [(q.id, q.question) for q in questions[N_TEST_QUESTIONS:]]
    told = [(f"s{i:04d}", TEMPLATES[i % len(TEMPLATES)].format(s)) for i, s in enumerate(sentences)]
    # Interleaved, so that a run stopped early (--limit, or killed) still has both kinds.
    train = [p for pair in itertools.zip_longest(asked, told) for p in pair if p is not None]
    return {"test": test, "train": train}


def references() -> list[dict[str, str]]:
    """The shipped reference texts of the train split, to be read by the LLM (teacher forcing), not generated:
    the answers of questions 101-619 to their questions, sentences 1-1,200 after "Say something."."""
    questions = read_questions(shipped_text("questions.jsonl"))[N_TEST_QUESTIONS:]
    sentences = read_sentences(shipped_text("sentences.txt"))[:N_TRAIN_SENTENCES]
    rows = [{"id": f"ref-{q.id}", "question": q.question, "answer": q.answer} for q in questions if q.answer]
    return rows + [{"id": f"ref-s{i:04d}", "question": SAY_PROMPT, "answer": s} for i, s in enumerate(sentences)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data_out/speech_phonemes/answers"))
    parser.add_argument("--model", help="speech LLM directory (default: the embedded default)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="at most this many train prompts")
    args = parser.parse_args()
    from speechllm.defaults import load_model
    from speechllm.inference.generation import GenerationConfig, generate

    torch.set_num_threads(1)
    model = load_model(args.model).eval()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "references.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in references())
    for split, items in prompts().items():
        items = items[: args.limit] if split == "train" and args.limit else items
        path = args.out / f"{split}.jsonl"
        done = len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0
        for start in range(done - done % args.batch_size, len(items), args.batch_size):
            batch = items[start : start + args.batch_size]
            answers = generate(
                model,
                [[{"role": "user", "content": p}] for _, p in batch],
                GenerationConfig(max_new_tokens=args.max_new_tokens),
            )
            with open(path, "a", encoding="utf-8") as f:
                for (qid, prompt), answer in list(zip(batch, answers, strict=True))[
                    done - start if done > start else 0 :
                ]:
                    f.write(json.dumps({"id": qid, "question": prompt, "answer": answer.strip()}) + "\n")
            done = start + len(batch)
            print(f"{split}: {done}/{len(items)}", flush=True)


if __name__ == "__main__":
    main()
