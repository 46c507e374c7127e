"""`speechllm eval`: quality on a manifest.

speechllm eval --manifest M [--model DIR] [--out DIR] [--limit N] [--batch-size B] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `eval` command to a CLI's subparsers."""
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
    import jiwer  # noqa: F401  (the eval extra, also before the model loads)
    import sacrebleu  # noqa: F401

    model = load_model(args.model)
    rows, summary = evaluate(samples, model_answerer(model, config.max_new_tokens), config)
    summary = {"model": args.model or "default", "manifest": str(args.manifest), **summary}
    out = args.out or Path("runs/eval") / args.manifest.stem
    paths = write_results(out, rows, summary, title=f"speechllm eval: {args.manifest.name}")
    print(paths["summary_md"].read_text(encoding="utf-8"))
    print(f"per-sample results: {paths['per_sample']}")
    return 0
