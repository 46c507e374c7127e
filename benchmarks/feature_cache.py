"""Feature cache figures: encoding real-time factor, and cached features vs the encoder in the training loop.

    python benchmarks/feature_cache.py --out /tmp/fc --num 1000 [--json OUT]

Builds (or reuses) `--num` eSpeak ASR utterances from the shipped sentences in `--out`, encodes them
with Whisper tiny.en (real length) into a fresh cache, then times the two ways a training step can
get its encoder frames for a batch of 8: reading the cache, or loading audio + log-mel + encoder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from speechllm.config import EncoderConfig
from speechllm.data.audio import load_audio
from speechllm.data.encoding import encoder_fn
from speechllm.data.feature_cache import FeatureCache, encode_manifest
from speechllm.data.manifest import read_manifest
from speechllm.model.encoder import load_whisper_encoder


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20, help="training batches of 8 to time each way")
    parser.add_argument("--json")
    args = parser.parse_args()
    manifest = args.out / "asr.jsonl"
    if not manifest.is_file():
        cmd = [sys.executable, "-m", "speechllm.cli", "data", "asr", "--out", str(args.out), "--num", str(args.num)]
        subprocess.run([*cmd, "--quiet"], check=True)
    samples = read_manifest(manifest)[: args.num]
    encoder = load_whisper_encoder(EncoderConfig())
    cache_dir = args.out / "bench-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    t = time.perf_counter()
    with FeatureCache(cache_dir, encoder.fingerprint()) as cache:
        stats = encode_manifest(samples, cache, encoder_fn(encoder), batch_size=8, progress=False)
    encode_wall = time.perf_counter() - t

    cache = FeatureCache(cache_dir, encoder.fingerprint())
    encode = encoder_fn(encoder)
    batches = [samples[i * 8 : (i + 1) * 8] for i in range(min(args.batches, len(samples) // 8))]
    t = time.perf_counter()
    for b in batches:
        frames = [torch.from_numpy(cache.get(s.id).astype("float32")) for s in b]
        torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
    cached_s = (time.perf_counter() - t) / len(batches)
    t = time.perf_counter()
    for b in batches:
        encode([load_audio(s.audio[0]) for s in b])  # read_manifest resolves paths
    live_s = (time.perf_counter() - t) / len(batches)

    figures = {
        "clips": stats["encoded"],
        "audio_hours": round(stats["audio_seconds"] / 3600, 3),
        "encode_rtf": round(stats["rtf"], 4),
        "encode_wall_s": round(encode_wall, 1),
        "cache_mb": round(du_mb(cache_dir), 1),
        "batch8_cached_ms": round(cached_s * 1000, 2),
        "batch8_live_encoder_ms": round(live_s * 1000, 1),
        "live_over_cached": round(live_s / cached_s, 1),
    }
    for k, v in figures.items():
        print(f"{k:26s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
