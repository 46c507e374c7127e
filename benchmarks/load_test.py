"""Load and soak test of the HTTP server on loopback, bounded in time, with and without continuous batching.

    python benchmarks/load_test.py [--model DIR | --tiny] [--clients 8] [--seconds 60] [--max-tokens 32]
                                   [--batching continuous|static|both] [--scenario] [--json OUT]

Starts a server in a subprocess on 127.0.0.1 (the default model unless `--model`, or a tiny random
one with `--tiny`) for each batching mode asked for, then runs `--clients` clients that each send,
one after another until `--seconds` have passed, a chat request that cycles through four kinds:
spoken (a 5 s eSpeak NG question as input_audio) or typed, streamed or not. Reports requests/s,
p50/p95/p99 latency, time to first token (streamed requests), the share of 429s, errors, and the
server's RSS at the start (after one warm-up request) and at the end.

`--scenario` then runs the abuse scenario of issue 17 against a fresh server: a short request on
the idle server (timed), a 60,000-word prompt (expects a 400 at once), five streamed requests
dropped by their clients after the first token, 12 concurrent short requests (expects 200 or 429),
and the short request again (timed).

Exits with status 1 when any request failed otherwise than by the documented 429 (queue full) or
503 (shutting down), or when the scenario did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

HOST = "127.0.0.1"
KINDS = [("spoken", True), ("typed", True), ("spoken", False), ("typed", False)]
TYPED = "What is the capital of France? Answer in one sentence."


def question_wav(seconds: float) -> bytes:
    sys.path.insert(0, str(Path(__file__).parent))
    from ttft import spoken_question

    audio, _ = spoken_question(seconds)
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------- the server (a subprocess)


def tiny_model() -> Any:
    """A random tiny model built like the test fixtures (tests the server, not a model)."""
    import tempfile

    from speechllm.model import build_speech_llm
    from speechllm.model.tiny import save_tiny_llm, save_tiny_whisper, tiny_speech_llm_config

    root = Path(tempfile.mkdtemp(prefix="speechllm-tiny-"))
    config = tiny_speech_llm_config(
        save_tiny_llm(root / "llm", max_positions=4096), save_tiny_whisper(root / "whisper")
    )
    return build_speech_llm(config).eval()


def serve(args: argparse.Namespace) -> None:
    """The server process: an Engine in the batching mode asked for, behind the app, under uvicorn."""
    import torch
    import uvicorn

    from speechllm.defaults import load_model
    from speechllm.inference.engine import Engine
    from speechllm.serve.app import create_app
    from speechllm.serve.settings import ServeSettings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = tiny_model() if args.tiny else load_model(args.model)
    settings = ServeSettings(host=HOST, port=args.serve, model_name="bench", max_queue=args.max_queue,
                             max_batch=args.max_batch, timeout=args.timeout)  # fmt: skip
    engine = Engine(model, max_batch=args.max_batch, max_queue=args.max_queue, continuous=args.batching == "continuous")
    try:
        uvicorn.run(create_app(engine, settings), host=HOST, port=args.serve, log_level="warning")
    finally:
        engine.close()


def start_server(args: argparse.Namespace, port: int, batching: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--serve", str(port), "--batching", batching, "--max-queue", str(args.max_queue),
           "--max-batch", str(args.max_batch), "--timeout", str(args.timeout)]  # fmt: skip
    cmd += ["--tiny"] if args.tiny else ["--model", args.model] if args.model else []
    server = subprocess.Popen(cmd, env={**os.environ, "NO_PROXY": HOST})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2, trust_env=False).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("the server did not become healthy in 600 s")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


# ---------------------------------------------------------------------- clients


def body(kind: str, stream: bool, max_tokens: int, wav: bytes) -> dict[str, Any]:
    if kind == "spoken":
        content: Any = [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
        ]
    else:
        content = TYPED
    out = {"model": "default", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    return {**out, "stream": True, "stream_options": {"include_usage": True}} if stream else out


async def one_request(http: httpx.AsyncClient, payload: dict[str, Any], drop_after_first: bool = False) -> dict:
    """Send one chat request; streamed ones are read chunk by chunk (or dropped after the first token)."""
    start = time.monotonic()
    record: dict[str, Any] = {"status": None, "ttft": None, "latency": None, "tokens": 0, "error": None}
    try:
        if not payload.get("stream"):
            r = await http.post("/v1/chat/completions", json=payload)
            record["status"] = r.status_code
            if r.status_code == 200:
                record["tokens"] = r.json()["usage"]["completion_tokens"]
            else:
                record["error"] = r.text[:200]
        else:
            async with http.stream("POST", "/v1/chat/completions", json=payload) as r:
                record["status"] = r.status_code
                if r.status_code != 200:
                    await r.aread()
                    record["error"] = r.text[:200]
                async for line in r.aiter_lines() if r.status_code == 200 else _nothing():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        record["error"] = chunk["error"]["message"]
                    elif chunk.get("usage"):
                        record["tokens"] = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and not record["ttft"]:
                        record["ttft"] = time.monotonic() - start
                        if drop_after_first:
                            break  # leaving the block closes the connection
    except httpx.HTTPError as e:
        record["error"] = f"{type(e).__name__}: {e}"
    record["latency"] = time.monotonic() - start
    return record


async def _nothing():  # an empty async iterator
    return
    yield


async def client(
    http: httpx.AsyncClient, i: int, args: argparse.Namespace, wav: bytes, until: float, out: list
) -> None:
    n = i  # each client starts at another kind, so all four run at once
    while time.monotonic() < until:
        kind, stream = KINDS[n % len(KINDS)]
        n += 1
        record = await one_request(http, body(kind, stream, args.max_tokens, wav))
        out.append({**record, "kind": kind, "stream": stream})
        if record["status"] in (429, 503):
            await asyncio.sleep(0.2)  # what a polite client does on "busy"


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summary(results: list[dict], elapsed: float) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200 and r["error"] is None]
    counts = Counter("200" if r in ok else str(r["status"]) if r["status"] in (429, 503) else "other" for r in results)
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "requests": len(results),
        "counts": {k: counts.get(k, 0) for k in ("200", "429", "503", "other")},
        "share_429": round(counts.get("429", 0) / max(1, len(results)), 3),
        "requests_per_s": round(len(ok) / elapsed, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1),
        "latency_p50_s": pct(latencies, 50),
        "latency_p95_s": pct(latencies, 95),
        "latency_p99_s": pct(latencies, 99),
        "ttft_p50_s": pct(ttfts, 50),
        "ttft_p95_s": pct(ttfts, 95),
        "ttft_p99_s": pct(ttfts, 99),
        "errors": sorted({str(r["error"]) for r in results if r not in ok and r["status"] not in (429, 503)})[:5],
    }


async def load(args: argparse.Namespace, url: str, wav: bytes, pid: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout + 30, limits=limits, trust_env=False) as http:
        await one_request(http, body("spoken", False, args.max_tokens, wav))  # warm-up, untimed
        rss_start = rss_mb(pid)
        results: list[dict] = []
        started = time.monotonic()
        until = started + args.seconds
        await asyncio.gather(*(client(http, i, args, wav, until, results) for i in range(args.clients)))
        elapsed = time.monotonic() - started
    return {
        **summary(results, elapsed),
        "wall_s": round(elapsed, 1),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_mb(pid),
    }


async def scenario(args: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    """Issue 17's 'Done means': abuse, then short requests (see the module doc)."""
    short = body("typed", False, 8, b"")
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout + 30, trust_env=False) as http:
        await one_request(http, short)  # warm-up
        idle = await one_request(http, short)
        long_text = " ".join(["word"] * 60_000)
        huge = await one_request(http, {**short, "messages": [{"role": "user", "content": long_text}]})
        dropped = [await one_request(http, body("typed", True, 256, b""), drop_after_first=True) for _ in range(5)]
        twelve = await asyncio.gather(*(one_request(http, short) for _ in range(12)))
        after = await one_request(http, short)
    statuses = Counter(str(r["status"]) for r in twelve)
    return {
        "idle_short_request_s": round(idle["latency"], 3),
        "prompt_60000_words": {"status": huge["status"], "seconds": round(huge["latency"], 3), "error": huge["error"]},
        "dropped_streams_status": [r["status"] for r in dropped],
        "twelve_concurrent": {"statuses": dict(statuses), "max_latency_s": round(max(r["latency"] for r in twelve), 3)},
        "short_request_after_s": round(after["latency"], 3),
        "rss_end_mb": rss_mb(pid),
        "ok": huge["status"] == 400 and set(statuses) <= {"200", "429"} and after["status"] == 200,
    }


def run_server(args: argparse.Namespace, batching: str, job: Any) -> dict[str, Any]:
    from speechllm.serve.background import free_port

    port = free_port(HOST)
    server = start_server(args, port, batching)
    try:
        return asyncio.run(job(f"http://{HOST}:{port}", server.pid))
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--tiny", action="store_true", help="serve a tiny random model (tests the server, not a model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0, help="the server's per-request deadline")
    parser.add_argument("--batching", choices=["continuous", "static", "both"], default="both")
    parser.add_argument("--question-seconds", type=float, default=5.0)
    parser.add_argument("--scenario", action="store_true", help="also run issue 17's abuse scenario")
    parser.add_argument("--no-load", action="store_true", help="skip the timed load (e.g. only --scenario)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    figures: dict[str, Any] = {
        "model": args.model or ("tiny random" if args.tiny else "embedded default"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens, "max_batch": args.max_batch,
    }  # fmt: skip
    failed = False
    if not args.no_load:
        wav = question_wav(args.question_seconds)
        modes = ["static", "continuous"] if args.batching == "both" else [args.batching]
        for mode in modes:
            figures[mode] = run_server(args, mode, lambda url, pid: load(args, url, wav, pid))
            failed |= bool(figures[mode]["counts"]["other"])
            print(mode, json.dumps(figures[mode]), flush=True)
    if args.scenario:
        mode = "static" if args.batching == "static" else "continuous"
        figures["scenario"] = run_server(args, mode, lambda url, pid: scenario(args, url, pid))
        failed |= not figures["scenario"]["ok"]
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if failed:
        print("FAIL: requests failed otherwise than by 429/503, or the scenario did not hold", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
