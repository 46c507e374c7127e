"""WER of /v1/audio/transcriptions with the ASR prompt in the training order (audio, then instruction:
what the endpoint asks now) and in the order it asked before (instruction, then audio), on the same files.

    speechllm data asr --text SENTENCES --out data_out/asr20 --no-augment --workers 1 --seed 7
    python benchmarks/asr_prompt_order.py --manifest data_out/asr20/asr.jsonl [--model DIR] [--json OUT]

"after" goes through the real endpoint (the app on an Engine, via FastAPI's TestClient); "before"
sends the old conversation (instruction first) through the same engine and the same decoding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from speechllm.data.audio import load_audio
from speechllm.data.manifest import read_manifest
from speechllm.defaults import load_model
from speechllm.eval.metrics import wer
from speechllm.inference.engine import ASR_INSTRUCTION, Engine
from speechllm.inference.generation import GenerationConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from fastapi.testclient import TestClient

    from speechllm.serve.app import create_app
    from speechllm.serve.settings import ServeSettings

    samples = read_manifest(args.manifest)
    refs = [s.target for s in samples]
    engine = Engine(load_model(args.model), max_batch=4)
    settings = ServeSettings(default_max_tokens=args.max_new_tokens)
    before, after = [], []
    with engine, TestClient(create_app(engine, settings)) as client:
        for s in samples:
            path = Path(s.audio[0])
            r = client.post("/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())})
            r.raise_for_status()
            after.append(r.json()["text"])
            audio = load_audio(str(path))
            old = [{"role": "user", "content": [{"type": "text", "text": ASR_INSTRUCTION},
                                                {"type": "audio", "audio": audio}]}]  # fmt: skip
            gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
            before.append(engine.submit(old, gen).result().text.strip())
    figures = {
        "files": len(samples),
        "manifest": args.manifest,
        "wer_before_instruction_first": round(wer(refs, before), 4),
        "wer_after_audio_first": round(wer(refs, after), 4),
        "examples": [{"ref": r, "before": b, "after": a} for r, b, a in list(zip(refs, before, after))[:3]],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
