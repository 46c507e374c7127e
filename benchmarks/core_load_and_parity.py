"""Core figures for the README: LLM load time (cold GGUF conversion vs warm cache) and encoder parity.

    python benchmarks/core_load_and_parity.py [--json OUT]

Cold = a fresh, empty cache directory (GGUF dequantized and converted); warm = the second load from
that cache. Each load runs in a fresh Python process, so imports are counted, as a user sees them.
Parity = our PyTorch Whisper tiny.en encoder vs ctranslate2's encode() on the same 30 s features.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

LOAD = (
    "import time; t=time.perf_counter();"
    "from speechllm.config import LLMConfig; from speechllm.weights.llm import load_llm;"
    "load_llm(LLMConfig()); print(time.perf_counter()-t)"
)


def timed_load(cache: str) -> tuple[float, float]:
    """(wall seconds of the whole process, seconds inside load_llm incl. imports)."""
    env = {**os.environ, "SPEECHLLM_CACHE": cache}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, float(out.stdout.strip().splitlines()[-1])


def encoder_parity() -> float:
    import ctranslate2
    import numpy as np
    import torch

    from speechllm.config import EncoderConfig
    from speechllm.model.features import LogMel
    from speechllm.weights.whisper import load_whisper_encoder, resolve_encoder_source

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 5) / 16000
    audio = (0.2 * np.sin(2 * np.pi * (150 + 200 * t) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    feats, _ = LogMel(80, pad_to_30s=True)([audio])
    enc = load_whisper_encoder(EncoderConfig(padding="30s")).eval()
    ct2 = ctranslate2.models.Whisper(str(resolve_encoder_source("bundled:whisper-tiny.en")), compute_type="float32")
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
    with torch.no_grad():
        ours, _ = enc(feats, torch.tensor([feats.shape[-1]]))
    return float(np.abs(ours.numpy() - ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold_wall, cold_load = timed_load(cache)
        warm_wall, warm_load = timed_load(cache)
    figures = {
        "llm_cold_load_s": round(cold_load, 2),
        "llm_warm_load_s": round(warm_load, 2),
        "llm_cold_process_s": round(cold_wall, 2),
        "llm_warm_process_s": round(warm_wall, 2),
        "encoder_max_abs_diff_vs_ct2": encoder_parity(),
    }
    for k, v in figures.items():
        print(f"{k:32s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
