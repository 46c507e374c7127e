"""Does SmolLM2 answer arithmetic better with numbers in words (as the held-out set types them) or in
digits (as Whisper writes what it hears)? Decides whether the bridge should spell numbers out.

    OMP_NUM_THREADS=1 python benchmarks/number_form.py [--data data_out/heldout] [--set spoken_qa]

Takes the held-out spoken questions whose transcript (what the default model's LLM reads, `hear`)
has a digit where the typed question has none, asks the LLM both forms as text (greedy, 48
tokens), and prints how many answers hold an accepted answer (`eval.metrics.answer_found`) each way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--set", default="spoken_qa")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    from speechllm.data.audio import load_audio
    from speechllm.defaults import load_model
    from speechllm.eval.metrics import answer_found
    from speechllm.inference.generation import GenerationConfig, generate

    torch.set_num_threads(1)
    samples = load_set(args.data, args.set, None)
    model = load_model()
    with torch.no_grad():
        heard = [model.hear([load_audio(s.audio[0])])[0] for s in samples]
    chosen = [
        (s, h) for s, h in zip(samples, heard) if re.search(r"\d", h) and not re.search(r"\d", s.meta["question"])
    ]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    rows = []
    for s, h in chosen:
        words, digits = (generate(model, [[{"role": "user", "content": q}]], gen)[0] for q in (s.meta["question"], h))
        rows.append({"id": s.id, "words": s.meta["question"], "digits": h, "answer_to_words": words,
                     "answer_to_digits": digits, "words_correct": answer_found(words, s.meta["answer"]),
                     "digits_correct": answer_found(digits, s.meta["answer"])})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    n = len(rows)
    print(f"{n} questions heard with digits: correct with words {sum(r['words_correct'] for r in rows)}/{n}, "
          f"with digits {sum(r['digits_correct'] for r in rows)}/{n}")  # fmt: skip


if __name__ == "__main__":
    main()
