"""`speechllm eval` (quality on a manifest) and `speechllm bench` (speed and memory vs the cascade).

speechllm eval --manifest M [--model DIR] [--out DIR] [--limit N] [--batch-size B] [--max-new-tokens N]
speechllm bench [--model DIR] [--manifest M | --n 5] [--json OUT] [--plots DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `eval` and `bench` commands to a CLI's subparsers."""
    p = subparsers.add_parser("eval", help="score a model on a manifest (WER/CER, BLEU/chrF, speech–text gap)")
    p.add_argument("--manifest", type=Path, required=True, help="JSONL manifest (see speechllm.data.manifest)")
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--out", type=Path, help="results folder (default: runs/eval/<manifest name>)")
    p.add_argument("--limit", type=int, help="only the first N samples of the manifest")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--language", default="en", help="text normalisation rules: en, or any other for basic rules")
    p.add_argument("--skip-unknown", action="store_true", help="leave out samples of tasks eval cannot score")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("bench", help="latency, throughput and memory: end-to-end model vs ASR + LLM cascade")
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--manifest", type=Path, help="inputs from a manifest (default: spoken shipped questions)")
    p.add_argument("--n", type=int, default=5, help="how many inputs (first N of the manifest or N questions)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, help="CPU threads for both systems (default: torch's default)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per stage; 0 skips training")
    p.add_argument("--train-batch-size", type=int, default=4)
    p.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    p.add_argument("--plots", type=Path, help="write PNG bar charts into this folder")
    p.add_argument("--tiny", action="store_true", help="tiny random models in a temp dir (smoke test)")
    p.add_argument("--no-cascade", action="store_true", help="measure only the end-to-end model")
    p.set_defaults(func=cmd_bench)


def cmd_eval(args: argparse.Namespace) -> int:
    from speechllm.data.manifest import read_manifest
    from speechllm.defaults import load_model
    from speechllm.eval.runner import EvalConfig, check_tasks, evaluate, model_answerer, write_results

    config = EvalConfig(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        language=args.language,
        skip_unknown=args.skip_unknown,
    )
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    samples = read_manifest(args.manifest)[: args.limit]
    check_tasks(samples, config.skip_unknown)  # fail before the model loads
    model = load_model(args.model)
    rows, summary = evaluate(samples, model_answerer(model, config.max_new_tokens), config)
    summary = {"model": args.model or "default", "manifest": str(args.manifest), **summary}
    out = args.out or Path("runs/eval") / args.manifest.stem
    paths = write_results(out, rows, summary, title=f"speechllm eval: {args.manifest.name}")
    print(paths["summary_md"].read_text(encoding="utf-8"))
    print(f"per-sample results: {paths['per_sample']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from speechllm.eval.bench import BenchConfig, run_bench, write_plots

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
    )
    figures = run_bench(config)
    text = json.dumps(figures, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    if args.plots:
        for path in write_plots(figures, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0
