"""The held-out spoken questions of `speechllm speech eval`: shipped questions 1-100 (never trained
on, by the default model nor its speech output), spoken by the held-out eSpeak accent
`en-gb-scotland` (12 voices never heard in training, as recipes/default_data.py holds out).

    python recipes/default_speech_questions.py --out data_out/speech_eval/questions
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from speechllm.data import tts
from speechllm.data.builders import SynthesisOptions, build_instruct, read_questions, shipped_text

HELDOUT = "espeak:en-gb-scotland*"
N_TEST_QUESTIONS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data_out/speech_eval/questions"))
    args = parser.parse_args()
    voices = [f"espeak:{v}" for v in tts.EspeakEngine().voices()]
    heldout = [v for v in voices if fnmatch.fnmatch(v, HELDOUT)]
    questions = read_questions(shipped_text("questions.jsonl"))[:N_TEST_QUESTIONS]
    samples = build_instruct(
        questions, args.out, SynthesisOptions(voices=heldout, seed=7), mixed_fraction=0.0, id_prefix="q", workers=1
    )
    print(f"{args.out / 'instruct.jsonl'}: {len(samples)} spoken questions, {len(heldout)} held-out voices")


if __name__ == "__main__":
    main()
