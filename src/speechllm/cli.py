"""The `speechllm` command: one entry point, a table of subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

SAMPLE_QUESTION = "What is the capital of France?"


def _conversation(audios: list, text: str | None) -> list[dict]:
    parts: list[dict] = [{"type": "audio", "audio": a} for a in audios]
    if text:
        parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def _sample_audio(text: str):
    """Speak `text` with the bundled eSpeak NG voice, so the main job runs with no input at all."""
    from speechllm.data.tts import EspeakEngine

    return EspeakEngine().synthesize(text, voice="en-us", rate=1.0)


def cmd_chat(args: argparse.Namespace) -> int:
    import torch

    from speechllm.data.audio import load_audio
    from speechllm.defaults import load_model
    from speechllm.inference.generation import GenerationConfig, text_only_context

    audios = [load_audio(p) for p in args.audio]
    text = args.text
    if not audios and not text:
        print(f"(no --audio or --text given: asking a spoken sample question: {SAMPLE_QUESTION!r})", file=sys.stderr)
        audios = [_sample_audio(SAMPLE_QUESTION)]
    model = load_model(args.model)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    with torch.inference_mode():
        batch = model.prepare([_conversation(audios, text)])
        with text_only_context(model, batch):
            _print_stream(model, batch, gen)
    return 0


def _print_stream(model, batch, gen) -> None:  # type: ignore[no-untyped-def]
    """Write the answer to stdout as it is generated (whole words only: no broken UTF-8)."""
    from speechllm.inference.generation import eos_token_ids, stream_generate

    eos = eos_token_ids(model)
    ids: list[int] = []
    shown = ""
    for step in stream_generate(model, batch, gen):
        token = int(step[0])
        if token in eos:
            break
        ids.append(token)
        full = model.processor.decode(ids)
        if full.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            continue
        sys.stdout.write(full[len(shown) :])
        sys.stdout.flush()
        shown = full
    sys.stdout.write("\n")


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
    p = sub.add_parser("chat", help="answer one turn of speech and/or text (streams the answer)")
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="audio file (repeatable)")
    p.add_argument("--text", help="text of the turn, after the audio")
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.set_defaults(func=cmd_chat)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="where the default weights and the cache are")
    p.set_defaults(func=cmd_info)


def cmd_train(args: argparse.Namespace) -> int:
    from speechllm.training.train import load_train_config, main

    config = load_train_config(args.config, args.overrides)
    metrics = main(config, resume=args.resume)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one training stage (YAML config + key.path=value overrides)")
    p.add_argument("--config", help="a YAML TrainConfig (configs/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. loop.max_steps=300 stage=asr")
    p.set_defaults(func=cmd_train)


def _add_data(sub: argparse._SubParsersAction) -> None:
    from speechllm.data.cli import register

    register(sub)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_chat, _add_info, _add_train, _add_data]


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
