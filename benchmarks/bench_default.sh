#!/usr/bin/env bash
# Speed, memory and training-throughput figures of the embedded default model (README, Figures):
# end-to-end vs the faster-whisper + LLM cascade on 5 spoken shipped questions, then each training stage.
#
#   bash benchmarks/bench_default.sh [OUT_DIR] [extra `speechllm bench` options]
#
# Writes OUT_DIR/bench.json and OUT_DIR/*.png (default OUT_DIR: runs/bench/default).
# Needs the [eval] and [data] extras and faster-whisper (pip install faster-whisper).
set -euo pipefail
out="${1:-runs/bench/default}"
shift || true
mkdir -p "$out"
speechllm bench --n 5 --max-new-tokens 64 --train-steps 3 --train-batch-size 4 \
  --json "$out/bench.json" --plots "$out" "$@" > "$out/bench.log"
python - "$out/bench.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
for key in ("machine", "threads", "inputs", "audio_s_mean", "e2e_ttft_s", "cascade_ttft_s", "ttft_ratio",
            "e2e_latency_s", "cascade_latency_s", "latency_ratio", "e2e_tokens_per_s", "cascade_tokens_per_s",
            "e2e_rtf", "cascade_rtf", "e2e_peak_rss_mb", "cascade_peak_rss_mb", "peak_rss_ratio",
            "cascade_asr_wer", "answer_agreement", "notes"):
    print(f"{key}: {f.get(key)}")
for key, value in f.items():
    if key.startswith("train_"):
        print(f"{key}: {value}")
PY
