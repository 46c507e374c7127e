"""`speechllm train`: one training stage from a YAML config and key.path=value overrides."""

from __future__ import annotations

import argparse


def add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train")
    p.add_argument("--config", help="a YAML TrainConfig (configs/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--export", action="store_true", help="only write <out_dir>/model from the latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. loop.max_steps=300 stage=asr")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from speechllm.training.train import export, load_train_config, main

    config = load_train_config(args.config, args.overrides)
    if args.export:
        print(export(config))
        return 0
    metrics = main(config, resume=args.resume)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0
