"""Time to first token for a 5 s spoken question, in-process, warm.

    python benchmarks/ttft.py [--model DIR] [--runs 5] [--seconds 5] [--json OUT]

Speaks "What is the capital of France?" with the bundled eSpeak NG voice, pads it with silence to
`--seconds`, and times `Engine.submit` -> first text delta (log-mel, Whisper encoder, compressor,
adaptor, LLM prefill over the prompt, first decoded token) after one warm-up run; reports the
median and the spread, plus the decode rate of the rest of the answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from speechllm.data.tts import EspeakEngine
from speechllm.defaults import load_model
from speechllm.inference.engine import Delta, Done, Engine
from speechllm.inference.generation import GenerationConfig

QUESTION = "What is the capital of France?"


def spoken_question(seconds: float) -> tuple[np.ndarray, float]:
    """The question spoken, padded with silence to `seconds`; also the speech's own duration."""
    speech = EspeakEngine().synthesize(QUESTION, voice="en-us", rate=1.0)
    total = max(int(seconds * 16000), speech.shape[0])
    return np.pad(speech, (0, total - speech.shape[0])), speech.shape[0] / 16000


def one_run(engine: Engine, audio: np.ndarray, max_new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first delta, seconds in all, tokens generated)."""
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": audio}]}]
    start = time.perf_counter()
    first = None
    for event in engine.submit(conversation, GenerationConfig(max_new_tokens=max_new_tokens)).events():
        if isinstance(event, Delta) and first is None:
            first = time.perf_counter() - start
        if isinstance(event, Done):
            total = time.perf_counter() - start
            return first if first is not None else total, total, event.completion_tokens
    raise AssertionError("no Done event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the spoken question")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    audio, speech_s = spoken_question(args.seconds)
    model = load_model(args.model)
    with Engine(model, max_batch=1, max_queue=1) as engine:
        one_run(engine, audio, args.max_new_tokens)  # warm-up: first-call allocations, lazy inits
        runs = [one_run(engine, audio, args.max_new_tokens) for _ in range(args.runs)]
    ttft = [r[0] for r in runs]
    decode_rate = [(n - 1) / (total - first) for first, total, n in runs if n > 1 and total > first]
    figures = {
        "audio_s": audio.shape[0] / 16000,
        "speech_s": round(speech_s, 2),
        "runs": args.runs,
        "ttft_median_s": round(statistics.median(ttft), 3),
        "ttft_min_s": round(min(ttft), 3),
        "ttft_max_s": round(max(ttft), 3),
        "decode_tokens_per_s": round(statistics.median(decode_rate), 1) if decode_rate else None,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
