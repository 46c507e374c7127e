"""`speechllm info`: where the default weights and the cache are."""

from __future__ import annotations

import argparse


def add_info(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sub.add_parser("info").set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.weights.llm import cache_root, resolve_llm_source
    from speechllm.weights.whisper import resolve_encoder_source

    shipped = (DEFAULT_CHECKPOINT / "config.yaml").is_file()
    print(f"encoder (default): {resolve_encoder_source('bundled:whisper-tiny.en')}")
    print(f"LLM (default):     {resolve_llm_source('bundled:smollm2-135m-instruct')}")
    print(f"trained adaptor:   {DEFAULT_CHECKPOINT if shipped else 'not shipped'}")
    print(f"cache:             {cache_root()}")
    return 0
