#!/usr/bin/env bash
# The default model's speech output, from nothing to the shipped folder (about 2 h 30 min on 2 CPU cores):
#   bash recipes/default_speech.sh
# 0. 4,099 more train sentences from the BIG-bench sdist on PyPI (recipes/extra_speech_text.py).
# 1. Piper `joe` speaks the training answers and sentences; k-means units over Whisper tiny.en layer 3.
# 2. The CTC speech decoder (LLM frozen, its states cached) and the unit vocoder train side by side,
#    one CPU thread each (two torch jobs with two threads each slow each other down ~10x); when the
#    decoder is done the vocoder is stopped after a checkpoint and resumed with both threads, then
#    given a second learning-rate cycle; then its duration predictor is replaced by one with lookahead.
# 3. Both are packed into src/speechllm/assets/default/speech_kmeans, an option: `speechllm chat --speak a.wav --speech src/speechllm/assets/default/speech_kmeans`.
set -euo pipefail
OUT=${OUT:-data_out/speech}
RUNS=${RUNS:-runs/speech}
BB=${BB:-/tmp/bb}
VOCODER_STEPS=${VOCODER_STEPS:-12000}
[ -f "$BB/bigbench-1.0.0.tar.gz" ] || pip download bigbench==1.0.0 --no-deps --no-binary :all: -d "$BB"
python recipes/extra_speech_text.py --sdist "$BB/bigbench-1.0.0.tar.gz" --out data_out/extra_text.txt
python recipes/default_speech_data.py --out "$OUT" --extra-text data_out/extra_text.txt

OMP_NUM_THREADS=1 speechllm vocoder train --units "$OUT/train_units.jsonl" --out "$RUNS/vocoder" \
  --steps "$VOCODER_STEPS" --batch-size 8 --save-every 250 --quiet &
vocoder=$!
OMP_NUM_THREADS=1 speechllm speech train-decoder --units "$OUT/train_units.jsonl" --dev-units "$OUT/test_units.jsonl" \
  --out "$RUNS/decoder" --upsample 12 --drop-over-upsample \
  --window 192 --layers 3 --steps 4500 --eval-every 500
# Stop the vocoder just after its next checkpoint (saved atomically; nothing lost), then resume it on both threads.
latest="$RUNS/vocoder/checkpoints/latest"
last=$(cat "$latest" 2>/dev/null || true)
while kill -0 "$vocoder" 2>/dev/null; do
  if [ "$(cat "$latest" 2>/dev/null || true)" != "$last" ]; then kill "$vocoder"; break; fi
  sleep 1
done
wait "$vocoder" || true
OMP_NUM_THREADS=2 speechllm vocoder train --units "$OUT/train_units.jsonl" --out "$RUNS/vocoder" \
  --steps "$VOCODER_STEPS" --batch-size 8 --save-every 250 --resume
# A second cosine cycle (warm restart) to 18,000 steps: held-out resynthesis WER 22.1% -> 20.8%.
OMP_NUM_THREADS=2 speechllm vocoder train --units "$OUT/train_units.jsonl" --out "$RUNS/vocoder" \
  --steps 18000 --batch-size 8 --save-every 250 --resume

# A duration predictor that hears 4 units ahead replaces the causal one (13 min on one thread):
# held-out generated-speech WER 51.8% -> 48.7%.
OMP_NUM_THREADS=1 speechllm vocoder train-durations --model "$RUNS/vocoder/model" --units "$OUT/train_units.jsonl" \
  --dev-units "$OUT/test_units.jsonl" --lookahead 4 --layers 3 --steps 3000 --out "$RUNS/durations" --quiet

speechllm speech pack --decoder "$RUNS/decoder/model" --vocoder "$RUNS/durations/model" \
  --out src/speechllm/assets/default/speech_kmeans
