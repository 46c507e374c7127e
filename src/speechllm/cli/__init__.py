"""The `speechllm` command: one entry point, a table of subcommands.

Each command names the function that adds its parser (`"module:function"`); only the chosen
command's module is imported, so `speechllm --help` loads no torch, and a command whose optional
dependency is missing says in one line which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from speechllm.cli.extras import missing_dependency_message


@dataclass(frozen=True)
class Command:
    register: str
    """`"module:function"`: the function takes the subparsers and adds this command's parser, whose
    `func` default runs it (a group registrar may add several commands of the table at once)."""
    help: str
    """The line `speechllm --help` shows (and the description of `speechllm COMMAND --help`)."""
    extra: str | None = None
    """The optional-dependency extra the command needs, preferred when naming a missing module's extra."""


COMMANDS: dict[str, Command] = {
    "chat": Command(
        "speechllm.cli.run:add_chat", "answer speech and/or text, streaming; multi-turn when interactive", "data"
    ),
    "transcribe": Command(
        "speechllm.cli.run:add_transcribe", "transcribe audio files or a manifest through the speech LLM"
    ),
    "serve": Command(
        "speechllm.cli.run:add_serve", "OpenAI-compatible HTTP API and web page (needs the serve extra)", "serve"
    ),
    "info": Command("speechllm.cli.info:add_info", "where the default weights and the cache are"),
    "train": Command(
        "speechllm.cli.train:add_train", "run one training stage (YAML config + key.path=value overrides)", "train"
    ),
    "data": Command("speechllm.data.cli:register", "build synthetic speech datasets", "data"),
    "eval": Command(
        "speechllm.eval.cli:register", "score a model on a manifest (WER/CER, BLEU/chrF, speech–text gap)", "eval"
    ),
    "bench": Command(
        "speechllm.cli.bench:add_bench",
        "latency, throughput and memory: end-to-end model vs ASR + LLM cascade",
        "bench",
    ),
    "units": Command(
        "speechllm.speech_out.cli:register", "discrete speech units (k-means over encoder frames)", "speech"
    ),
    "vocoder": Command("speechllm.speech_out.cli:register", "train the unit vocoder, or voice units with it", "speech"),
    "speech": Command("speechllm.speech_out.cli:register", "the speech decoder and the packed speech output", "speech"),
}


def load(target: str) -> Callable[..., object]:
    """The function a `"module:function"` string names (importing its module now)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def chosen_command(argv: list[str]) -> str | None:
    """The first argument that is not an option (the top-level options take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s real arguments; every other command is a name and a help line."""
    parser = argparse.ArgumentParser(prog="speechllm", description="Build, train, evaluate and serve speech LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in COMMANDS:
        load(COMMANDS[command].register)(sub)
        chosen = sub.choices[command]
        chosen.description = chosen.description or COMMANDS[command].help
    for name, spec in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=spec.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = chosen_command(argv)
    try:
        args = build_parser(command).parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        spec = COMMANDS.get(command or "")
        message = missing_dependency_message(e, spec.extra if spec else None)
        if message is None:  # a module of speechllm itself: a bug, shown whole
            raise
        print(f"speechllm {command}: {message}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"speechllm {command}: error: {e}", file=sys.stderr)
        return 2
