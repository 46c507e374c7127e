"""Whisper tiny.en's own decoder on an ASR manifest: the WER our speech LLM is measured against.

    python benchmarks/whisper_asr_baseline.py --manifest data_out/default/test.jsonl [--beam 1] [--json OUT]

Uses faster-whisper (CTranslate2, int8 on CPU) over the same bundled tiny.en weights our encoder
reads, English, no timestamps; WER with our Whisper-style normalisation (speechllm.eval.metrics).
"""

from __future__ import annotations

import argparse
import json
import time

from speechllm.data.audio import load_audio
from speechllm.data.manifest import read_manifest
from speechllm.eval.metrics import wer
from speechllm.eval.whisper_asr import WhisperTranscriber


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy, like our model)")
    parser.add_argument("--json")
    args = parser.parse_args()
    transcribe = WhisperTranscriber(beam_size=args.beam)
    samples = [s for s in read_manifest(args.manifest) if s.task == "asr"]
    refs, hyps = [], []
    t = time.perf_counter()
    for s in samples:
        hyps.append(transcribe(load_audio(s.audio[0])))
        refs.append(s.target)
    seconds = time.perf_counter() - t
    figures = {"samples": len(samples), "whisper_wer": round(wer(refs, hyps), 4), "beam": args.beam,
               "seconds": round(seconds, 1)}  # fmt: skip
    print(json.dumps(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**figures, "hypotheses": hyps}, f, indent=2)


if __name__ == "__main__":
    main()
