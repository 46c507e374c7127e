"""The LLM's rescoring pass with its hypotheses packed into one row (a trie of their tokens under a
4-D attention mask, each position seeing the template's start and its own ancestors) against the
batched rows `model.rescore.TurnScorer` runs: mean seconds per scored question (best of 3 each),
positions (the packed row's, and the hypotheses' rows' without the batch's right padding), and the
largest difference between the two ways' scores.

    python benchmarks/rescore_packed.py [--set spoken_qa] [--num 40] [--threads 2]

The hypotheses are those the default's recognizer finds on `--num` questions of the held-out set
(the fixed subset `heldout_table.load_set` draws; only questions with more than one distinct
hypothesis are scored). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def packed_scores(scorer: Any, texts: list[str]) -> tuple[list[float], int]:
    """`scorer`'s log-probabilities of `texts`, their runs packed into one trie-shaped row."""
    import torch
    from transformers import DynamicCache

    from speechllm.weights.llm import cache_kwargs

    kv, first = scorer._prefix_state(torch.device("cpu"))
    turns, runs = zip(*(scorer._turn_ids(t) for t in texts))
    p = len(scorer.prefix)
    nodes: list[int] = []  # each trie node's token
    parent: list[int] = []  # its parent node, -1 at the root
    depth: list[int] = []
    index: dict[tuple[int, int], int] = {}
    paths = []
    for run in runs:
        path, at = [], -1
        for token in run:
            if (at, token) not in index:
                index[(at, token)] = len(nodes)
                nodes.append(token)
                parent.append(at)
                depth.append(0 if at < 0 else depth[at] + 1)
            at = index[(at, token)]
            path.append(at)
        paths.append(path)
    q = len(nodes)
    allow = torch.zeros(q, q, dtype=torch.bool)  # Q, Q: a node sees itself and its ancestors
    for i in range(q):
        j = i
        while j >= 0:
            allow[i, j] = True
            j = parent[j]
    mask = torch.cat([torch.ones(q, p, dtype=torch.bool), allow], 1)[None, None]  # 1, 1, Q, P + Q
    cache = DynamicCache(ddp_cache_data=list(kv))
    with torch.no_grad():
        out = scorer.llm(
            input_ids=torch.tensor([nodes]),
            attention_mask=mask,
            position_ids=torch.tensor([[p + d for d in depth]]),
            **cache_kwargs(scorer.llm, cache),
        )
    logp = out.logits[0].float().log_softmax(-1)  # Q, V
    scores = []
    for turn, path in zip(turns, paths):
        score = float(first[turn[0]])
        for node, token in zip(path[: len(turn) - 1], turn[1:]):
            score += float(logp[node, token])
        scores.append(score)
    return scores, q


def best_of(n: int, f: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--set", dest="name", default="spoken_qa")
    parser.add_argument("--num", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    from speechllm.data.audio import load_audio
    from speechllm.defaults import load_model
    from speechllm.model import rescore

    torch.set_num_threads(args.threads)
    model = load_model(None, []).eval()
    scored: list[list[str]] = []
    batched = rescore.TurnScorer.__call__

    def recording(self: Any, texts: list[str]) -> list[float]:
        scored.append(list(texts))
        return batched(self, texts)

    rescore.TurnScorer.__call__ = recording  # type: ignore[method-assign]
    with torch.no_grad():
        for sample in load_set(args.data, args.name, args.num):
            model.hear([load_audio(sample.audio[0])])
    rescore.TurnScorer.__call__ = batched  # type: ignore[method-assign]
    scorer = model._turn_scorer
    if not scored or scorer is None:
        raise SystemExit("no question had more than one hypothesis to score")
    t_rows = t_packed = diff = 0.0
    run_rows = run_packed = 0
    for texts in scored:
        t1, rows = best_of(3, lambda texts=texts: batched(scorer, texts))
        t2, (packed, q) = best_of(3, lambda texts=texts: packed_scores(scorer, texts))
        t_rows, t_packed = t_rows + t1, t_packed + t2
        run_rows += sum(len(scorer._turn_ids(t)[1]) for t in texts)
        run_packed += q
        diff = max(diff, *(abs(a - b) for a, b in zip(rows, packed)))
    n = len(scored)
    print(json.dumps({
        "set": args.name, "questions": args.num, "scored": n, "threads": args.threads,
        "batched_s": round(t_rows / n, 4), "packed_s": round(t_packed / n, 4),
        "positions_batched": round(run_rows / n, 1), "positions_packed": round(run_packed / n, 1),
        "max_score_difference": diff,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
