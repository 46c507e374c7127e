"""What N-best rescoring costs before the first answer token, and how often it could be skipped.

    OMP_NUM_THREADS=1 python benchmarks/rescore_cost.py [--repeats 15] [--dev runs/rescore/dev_b5.jsonl]

1. Time (median of `--repeats`, the cases interleaved, one thread) of the LLM pass that rescoring
   makes (`model.rescore.TurnScorer` over 1, 2 and 3 hypotheses of one question; it is also the
   answer's prefill), next to the LLM's plain forward over the same user turn and header with the
   template's start cached (what a typed prompt costs) and over one token (the weights read once),
   and its output layer on the last row, sliced as transformers does and as a 2-D copy: for the
   shipped float32 LLM and a bfloat16 copy.
2. From the development set of benchmarks/rescore_weight.py (its `--dev` output, no held-out audio):
   for each margin m, the questions whose best hypothesis leads the next by at least m (recognizer
   log-probability, summed), where rescoring could be skipped, and how many of them rescoring
   (weight `--weight`) changes, and changes to the question's own text.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEXTS = ["What is the capital of Portugal?", "What is the capital of power juggle?", "What is the capital of Portugal"]


def timings(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each case, the cases run in turn `repeats` times after one warm-up round."""
    for run in cases.values():
        run()
    seen: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            t0 = time.perf_counter()
            run()
            seen[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in seen.items()}


def pass_costs(repeats: int) -> None:
    import torch
    from transformers import DynamicCache

    from speechllm.defaults import load_model
    from speechllm.model.rescore import TurnScorer
    from speechllm.weights.llm import cache_kwargs

    torch.set_num_threads(1)
    model = load_model(None, [])
    tokenizer = model.processor.tokenizer
    for dtype in (torch.float32, torch.bfloat16):
        llm = model.llm if dtype == torch.float32 else copy.deepcopy(model.llm).to(dtype)
        scorer = TurnScorer(llm, tokenizer, model.processor.system_prompt)
        kv, _ = scorer._prefix_state(torch.device("cpu"))
        turn = torch.tensor([scorer._turn_ids(TEXTS[0])[1]])  # 1, T: the user's turn and the header

        @torch.no_grad()
        def forward(ids: Any, llm: Any = llm, kv: Any = kv) -> None:
            cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in kv])
            mask = torch.ones(1, kv[0][0].shape[2] + ids.shape[1], dtype=torch.long)  # 1, P + T, as generation
            llm(input_ids=ids, attention_mask=mask, **cache_kwargs(llm, cache), use_cache=True, logits_to_keep=1)

        cases = {f"TurnScorer, {n} text(s)": (lambda n=n, s=scorer: s(TEXTS[:n])) for n in (1, 2, 3)}
        cases[f"plain forward, {turn.shape[1]} positions"] = lambda t=turn: forward(t)
        cases["plain forward, 1 position"] = lambda t=turn[:, :1]: forward(t)
        head = llm.get_output_embeddings().weight
        rows = torch.randn(1, turn.shape[1], llm.config.hidden_size, dtype=dtype)  # 1, T, D
        last = rows[:, -1:]  # 1, 1, D: the last position as transformers slices it for logits_to_keep=1
        cases["output layer, last row sliced (1, 1, D)"] = lambda h=head, x=last: torch.nn.functional.linear(x, h)
        flat = last[0].clone()  # 1, D
        cases["output layer, last row (1, D)"] = lambda h=head, x=flat: torch.nn.functional.linear(x, h)
        for name, seconds in timings(cases, repeats).items():
            print(json.dumps({"llm_dtype": str(dtype).split(".")[-1], "case": name, "seconds": round(seconds, 4)}))


def margins(dev: Path, weight: float) -> None:
    from speechllm.model.rescore import best_by_llm

    rows = [json.loads(line) for line in dev.read_text(encoding="utf-8").splitlines() if line.strip()]
    for m in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0):
        skipped = changed = to_question = 0
        for row in rows:
            hyps = [tuple(h) for h in row["hyps"]]
            if len(hyps) > 1 and hyps[0][1] - hyps[1][1] < m:
                continue
            skipped += 1
            pick = best_by_llm(hyps, row["llm"], weight) if len(hyps) > 1 else hyps[0][0]
            changed += pick != hyps[0][0]
            to_question += pick != hyps[0][0] and pick == row["question"]
        print(json.dumps({"margin": m, "n": len(rows), "skippable": skipped, "rescoring_changes": changed,
                          "changes_to_the_question": to_question}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dev", type=Path, default=Path("runs/rescore/dev_b5.jsonl"),
                        help="benchmarks/rescore_weight.py's hypotheses and LLM scores")  # fmt: skip
    parser.add_argument("--weight", type=float, default=0.7, help="bridge.rescore")
    args = parser.parse_args()
    pass_costs(args.repeats)
    if args.dev.is_file():
        margins(args.dev, args.weight)
    else:
        print(f"no {args.dev}: run benchmarks/rescore_weight.py first for the margins")


if __name__ == "__main__":
    main()
