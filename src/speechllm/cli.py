"""The `speechllm` command: one entry point, a table of subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


def cmd_info(args: argparse.Namespace) -> int:
    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.weights.llm import cache_root, resolve_llm_source
    from speechllm.weights.whisper import resolve_encoder_source

    print(f"encoder (default): {resolve_encoder_source('bundled:whisper-tiny.en')}")
    print(f"LLM (default):     {resolve_llm_source('bundled:smollm2-135m-instruct')}")
    print(
        f"trained adaptor:   {DEFAULT_CHECKPOINT if (DEFAULT_CHECKPOINT / 'config.yaml').is_file() else 'not shipped'}"
    )
    print(f"cache:             {cache_root()}")
    return 0


def _add_chat(sub: argparse._SubParsersAction) -> None:
    from speechllm.inference.cli import add_chat

    add_chat(sub)


def _add_inference(sub: argparse._SubParsersAction) -> None:
    from speechllm.inference.cli import register

    register(sub)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="where the default weights and the cache are")
    p.set_defaults(func=cmd_info)


def cmd_train(args: argparse.Namespace) -> int:
    from speechllm.training.train import export, load_train_config, main

    config = load_train_config(args.config, args.overrides)
    if args.export:
        print(export(config))
        return 0
    metrics = main(config, resume=args.resume)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one training stage (YAML config + key.path=value overrides)")
    p.add_argument("--config", help="a YAML TrainConfig (configs/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--export", action="store_true", help="only write <out_dir>/model from the latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. loop.max_steps=300 stage=asr")
    p.set_defaults(func=cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from speechllm.eval.cli import register

    register(sub)  # eval and bench


def _add_data(sub: argparse._SubParsersAction) -> None:
    from speechllm.data.cli import register

    register(sub)


def _add_speech(sub: argparse._SubParsersAction) -> None:
    from speechllm.speech_out.cli import register

    register(sub)  # units, vocoder and speech


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_chat,
    _add_inference,
    _add_info,
    _add_train,
    _add_data,
    _add_eval,
    _add_speech,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechllm", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"speechllm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
