"""What the Piper voice's chunk size costs: Whisper tiny.en WER and render time of text answers
phonemized and rendered in chunks (no speech decoder: the ceiling of the phoneme path).

    OMP_NUM_THREADS=1 python benchmarks/phoneme_chunking.py --answers data_out/speech_phonemes/answers/test.jsonl \\
        --num 40 --out runs/speech/chunking.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from speechllm.config import SAMPLE_RATE
from speechllm.eval.metrics import wer
from speechllm.eval.whisper_asr import WhisperTranscriber
from speechllm.speech_out.answers import read_answers
from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.piper_voice import PiperVoice

SETTINGS = {
    "whole answer (one chunk a sentence)": {"first_chunk_words": 1000, "chunk_words": 1000},
    "first 1 word, then phrases of <= 6": {"first_chunk_words": 1, "chunk_words": 6},
    "first 2 words, then phrases of <= 12": {"first_chunk_words": 2, "chunk_words": 12},
    "first 3 words, then phrases of <= 12": {"first_chunk_words": 3, "chunk_words": 12},
    "voice's own noise, first 2 words, phrases of <= 12": {"noise_scale": 0.667, "noise_w": 0.8},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=Path, required=True)
    parser.add_argument("--num", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/speech/chunking.json"))
    args = parser.parse_args()
    answers = read_answers(args.answers)[: args.num]
    judge = WhisperTranscriber()
    results = {}
    for name, overrides in SETTINGS.items():
        voice = PiperVoice(dataclasses.replace(VoiceConfig(), **overrides))
        hyps, seconds, audio_s, first_s = [], 0.0, 0.0, []
        for a in answers:
            units = voice.inventory.encode(a.text)
            t = time.perf_counter()
            audio = voice.synthesize(units)
            seconds += time.perf_counter() - t
            audio_s += len(audio) / SAMPLE_RATE
            chunker = voice.chunker()
            first = (chunker.push(units) or [chunker.finish()])[0]
            t = time.perf_counter()
            voice.render(first)
            first_s.append(time.perf_counter() - t)
            hyps.append(judge(audio))
        results[name] = {
            "wer": wer([a.text for a in answers], hyps),
            "rtf": seconds / audio_s,
            "first_chunk_render_s_mean": sum(first_s) / len(first_s),
        }
        print(name, results[name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"answers": len(answers), **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
