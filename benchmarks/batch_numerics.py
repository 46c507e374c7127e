"""Does the LLM give the same prompt the same logits whatever else runs in its batch? The question
behind an LLM in bfloat16: a spoken question's prompt is built on the user's turn that N-best
rescoring ran in a batch with the other hypotheses (`model.rescore.TurnScorer`), a typed one is
prefilled alone, and the held-out table answers both in batches of 8.

    OMP_NUM_THREADS=1 python benchmarks/batch_numerics.py [--dtype float32 bfloat16] [--num 40]

For each of the first `--num` held-out spoken questions (typed text), three runs of the same token ids:
its user turn scored alone, scored after two other questions (right-padded batch of 3), and the
whole prompt prefilled plainly (one row, `logits_to_keep=1`). Prints per dtype the largest
difference of the logits after the assistant's header between the runs, and how many questions'
next token (argmax) differs between them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--num", type=int, default=40)
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout/spoken_qa/spoken_qa.jsonl"))
    args = parser.parse_args()
    import torch

    from speechllm.config import LLMConfig
    from speechllm.data.manifest import read_manifest
    from speechllm.model.rescore import TurnScorer
    from speechllm.weights.llm import load_llm

    torch.set_num_threads(1)
    questions = [s.meta["question"] for s in read_manifest(args.data)][: args.num]
    for dtype in args.dtype:
        llm, tokenizer = load_llm(LLMConfig(source="bundled:smollm2-135m-instruct", dtype=dtype))  # type: ignore[arg-type]
        scorer = TurnScorer(llm, tokenizer, None)
        batch_diff = plain_diff = 0.0
        batch_flips = plain_flips = 0
        with torch.inference_mode():
            for i, q in enumerate(questions):
                scorer([q])
                alone = scorer.turn_state(0)
                others = [questions[(i + 1) % len(questions)], questions[(i + 2) % len(questions)]]
                scorer([*others, q])
                batched = scorer.turn_state(2)
                plain = llm(input_ids=torch.tensor([alone.ids]), logits_to_keep=1).logits[0, -1]
                a, b, c = alone.logits.float(), batched.logits.float(), plain.float()
                batch_diff = max(batch_diff, float((a - b).abs().max()))
                plain_diff = max(plain_diff, float((a - c).abs().max()))
                batch_flips += int(a.argmax() != b.argmax())
                plain_flips += int(a.argmax() != c.argmax())
        figures = {
            "dtype": dtype,
            "n": len(questions),
            "max_logit_diff_batch_of_3": round(batch_diff, 6),
            "argmax_differs_batch_of_3": batch_flips,
            "max_logit_diff_plain_prefill": round(plain_diff, 6),
            "argmax_differs_plain_prefill": plain_flips,
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
