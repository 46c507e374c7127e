"""Load test of the HTTP server: N concurrent streaming clients on loopback for a bounded time.

    python benchmarks/load_test.py [--model DIR | --tiny] [--clients 8] [--seconds 60] [--max-tokens 32]
                                   [--max-queue 64] [--max-batch 8] [--json OUT]

Starts `speechllm serve` in a subprocess on 127.0.0.1 (the default model unless `--model`, or a
tiny random one with `--tiny`), then runs `--clients` clients that each send, one after another
until `--seconds` have passed, a streamed chat request holding a 5 s spoken question (eSpeak NG,
padded with silence). Reports throughput, p50/p95 latency and time to first token, and the counts
of 200 / 429 / 503 / other. Exits with status 1 when any request failed otherwise than by the
documented 429 (queue full) or 503 (shutting down).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

HOST = "127.0.0.1"


def question_wav(seconds: float) -> bytes:
    sys.path.insert(0, str(Path(__file__).parent))
    from ttft import spoken_question

    audio, _ = spoken_question(seconds)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def serve_tiny(port: int, max_queue: int, max_batch: int) -> None:
    """Server process for --tiny: a random tiny model built like the test fixtures."""
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    import uvicorn
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration

    from conftest import make_tiny_tokenizer
    from speechllm.config import AdaptorConfig, EncoderConfig, LLMConfig, SpeechLLMConfig
    from speechllm.inference.engine import Engine
    from speechllm.model import build_speech_llm
    from speechllm.serve.app import create_app
    from speechllm.serve.settings import ServeSettings

    root = Path(tempfile.mkdtemp(prefix="speechllm-tiny-"))
    tok = make_tiny_tokenizer()
    torch.manual_seed(0)
    llm = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    tie_word_embeddings=True, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    )  # fmt: skip
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    WhisperForConditionalGeneration(
        WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=1,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                      max_source_positions=1500, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
                      eos_token_id=2, bos_token_id=1)
    ).save_pretrained(root / "whisper")  # fmt: skip
    config = SpeechLLMConfig(
        encoder=EncoderConfig(source=str(root / "whisper")),
        llm=LLMConfig(source=str(root / "llm")),
        adaptor=AdaptorConfig(kind="mlp", hidden_dim=32),
    )
    settings = ServeSettings(host=HOST, port=port, model_name="tiny", max_queue=max_queue, max_batch=max_batch)
    engine = Engine(build_speech_llm(config).eval(), max_batch=max_batch, max_queue=max_queue)
    uvicorn.run(create_app(engine, settings), host=HOST, port=port, log_level="warning")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    if args.tiny:
        cmd = [sys.executable, __file__, "--serve-tiny", str(port), "--max-queue", str(args.max_queue),
               "--max-batch", str(args.max_batch)]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "speechllm.cli", "serve", "--host", HOST, "--port", str(port),
               "--max-queue", str(args.max_queue), "--max-batch", str(args.max_batch), "--timeout", "300"]  # fmt: skip
        if args.model:
            cmd += ["--model", args.model]
    server = subprocess.Popen(cmd, env={**os.environ, "NO_PROXY": HOST})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("the server did not become healthy in 600 s")


async def client(http: httpx.AsyncClient, body: dict, until: float, results: list[dict]) -> None:
    while time.monotonic() < until:
        start = time.monotonic()
        record: dict = {"status": None, "ttft": None, "latency": None, "tokens": 0, "error": None}
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                record["status"] = r.status_code
                if r.status_code != 200:
                    await r.aread()
                    record["error"] = r.text[:200]
                else:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            record["error"] = chunk["error"]["message"]
                        elif chunk.get("usage"):
                            record["tokens"] = chunk["usage"]["completion_tokens"]
                        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and not record["ttft"]:
                            record["ttft"] = time.monotonic() - start
        except httpx.HTTPError as e:
            record["error"] = f"{type(e).__name__}: {e}"
        record["latency"] = time.monotonic() - start
        results.append(record)
        if record["status"] in (429, 503):
            await asyncio.sleep(0.2)  # what a polite client does on "busy"


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def run_clients(args: argparse.Namespace, port: int, wav: bytes) -> tuple[list[dict], float]:
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
    body = {
        "model": "default",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": [audio]}],
    }
    results: list[dict] = []
    limits = httpx.Limits(max_connections=args.clients + 4)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=600, limits=limits, trust_env=False) as http:
        until = started + args.seconds
        await asyncio.gather(*(client(http, body, until, results) for _ in range(args.clients)))
    return results, time.monotonic() - started


def report(results: list[dict], elapsed: float, args: argparse.Namespace) -> dict:
    ok = [r for r in results if r["status"] == 200 and r["error"] is None]
    counts = Counter("200" if r in ok else str(r["status"]) if r["status"] in (429, 503) else "other" for r in results)
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "model": args.model or ("tiny random" if args.tiny else "embedded default"),
        "clients": args.clients,
        "seconds": args.seconds,
        "wall_s": round(elapsed, 1),
        "requests": len(results),
        "counts": {k: counts.get(k, 0) for k in ("200", "429", "503", "other")},
        "throughput_req_per_s": round(len(ok) / elapsed, 3),
        "throughput_tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1),
        "latency_p50_s": pct(latencies, 50),
        "latency_p95_s": pct(latencies, 95),
        "ttft_p50_s": pct(ttfts, 50),
        "ttft_p95_s": pct(ttfts, 95),
        "errors": sorted({str(r["error"]) for r in results if r not in ok and r["status"] not in (429, 503)})[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--tiny", action="store_true", help="serve a tiny random model (tests the server, not a model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--question-seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--serve-tiny", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_tiny:
        serve_tiny(args.serve_tiny, args.max_queue, args.max_batch)
        return

    from speechllm.serve.background import free_port

    wav = question_wav(args.question_seconds)
    port = free_port(HOST)
    server = start_server(args, port)
    try:
        results, elapsed = asyncio.run(run_clients(args, port, wav))
    finally:
        server.terminate()
        server.wait(30)
    figures = report(results, elapsed, args)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if figures["counts"]["other"]:
        print("FAIL: requests failed otherwise than by 429/503", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
