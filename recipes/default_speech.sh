#!/usr/bin/env bash
# The default model's speech output, from nothing to the shipped folder (about an hour on 2 CPU cores):
#   bash recipes/default_speech.sh
# 1. Piper `joe` speaks the training answers and sentences; k-means units over Whisper tiny.en layer 3.
# 2. The CTC speech decoder (LLM frozen, its states cached) and the unit vocoder train side by side,
#    one CPU thread each (two torch jobs with two threads each slow each other down ~10x).
# 3. Both are packed into src/speechllm/assets/default/speech, which `speechllm chat --speak` loads.
set -euo pipefail
OUT=${OUT:-data_out/speech}
RUNS=${RUNS:-runs/speech}
python recipes/default_speech_data.py --out "$OUT"
OMP_NUM_THREADS=1 speechllm speech train-decoder --units "$OUT/train_units.jsonl" --dev-units "$OUT/test_units.jsonl" \
  --out "$RUNS/decoder" --upsample 12 --window 192 --steps 3000 --eval-every 500 &
OMP_NUM_THREADS=1 speechllm vocoder train --units "$OUT/train_units.jsonl" --out "$RUNS/vocoder" \
  --steps 3000 --batch-size 8 --save-every 250 &
wait
speechllm speech pack --decoder "$RUNS/decoder/model" --vocoder "$RUNS/vocoder/model" \
  --out src/speechllm/assets/default/speech
