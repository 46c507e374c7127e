"""`speechllm bench`: latency, throughput and memory of the end-to-end model vs the ASR + LLM cascade.

speechllm bench [--model DIR] [--manifest M | --n 5] [--rounds R] [--json OUT] [--plots DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench")
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--manifest", type=Path, help="inputs from a manifest (default: spoken shipped questions)")
    p.add_argument("--n", type=int, default=5, help="how many inputs (first N of the manifest or N questions)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, help="CPU threads for both systems (default: torch's default)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per stage; 0 skips training")
    p.add_argument("--train-batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1,
                   help="run the two systems this many times in turn; the figures pool the rounds")  # fmt: skip
    p.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    p.add_argument("--plots", type=Path, help="write PNG bar charts into this folder")
    p.add_argument("--tiny", action="store_true", help="tiny random models in a temp dir (smoke test)")
    p.add_argument("--no-cascade", action="store_true", help="measure only the end-to-end model")
    p.add_argument("--no-reuse-prompts", action="store_true",
                   help="prefill every prompt whole (default: reuse the shared system turn)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override the end-to-end model's config, e.g. bridge.beam_size=1 (repeatable)")  # fmt: skip
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from speechllm.bench import BenchConfig, run_bench, write_plots

    config = BenchConfig(
        model=args.model,
        manifest=str(args.manifest) if args.manifest else None,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        train_steps=args.train_steps,
        train_batch_size=args.train_batch_size,
        tiny=args.tiny,
        cascade=not args.no_cascade,
        overrides=list(args.overrides),
        reuse_prompts=not args.no_reuse_prompts,
        rounds=args.rounds,
    )
    figures = run_bench(config)
    text = json.dumps(figures, indent=2)
    if args.json_out:
        from speechllm.atomic import atomic_write_text

        atomic_write_text(args.json_out, text + "\n")
    if args.plots:
        for path in write_plots(figures, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0
