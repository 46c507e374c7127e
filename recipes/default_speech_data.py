"""Data for the default model's speech output: one voice speaking answers, and its units.

    python recipes/default_speech_data.py --out data_out/speech

- voice: Piper `joe` (the neural US voice on PyPI), rate 1, no augmentation. Whisper tiny.en
  transcribes it at 9.6% WER against 37% for eSpeak en-us on the same 30 sentences (measured
  with benchmarks/whisper_asr_baseline.py), and speech output is judged by Whisper;
- train: the answers of shipped questions 101-619 and shipped sentences 1-1,200, plus, with
  `--extra-text FILE`, one sentence a line of FILE (recipes/extra_speech_text.py writes 4,101
  BIG-bench sentences), spoken into out/extra; a FILE line that is test text is dropped (2 are);
- test: the answers of questions 1-100 (the spoken questions of the instruct test set) and
  sentences 1,201-1,300: text the speech decoder and vocoder never saw;
- units: k-means (`speechllm units fit`) over the train audio (not the extra), then frame-level units of every
  utterance in train_units.jsonl / test_units.jsonl (the `units` field of each sample).
Every step resumes or is skipped when its output exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechllm.data.audio import load_audio
from speechllm.data.augment import AugmentConfig
from speechllm.data.builders import SynthesisOptions, build_asr, read_questions, read_sentences, shipped_text
from speechllm.data.manifest import read_manifest, write_manifest
from speechllm.speech_out.config import UnitsConfig
from speechllm.speech_out.units import UnitExtractor, extract_manifest

VOICE = "piper:joe"
N_TEST_QUESTIONS = 100
N_TRAIN_SENTENCES = 1200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data_out/speech"))
    parser.add_argument("--layer", type=int, default=UnitsConfig.layer)
    parser.add_argument("--k", type=int, default=UnitsConfig.k)
    parser.add_argument("--extra-text", type=Path, help="more train sentences, one a line")
    parser.add_argument("--workers", type=int, default=2, help="TTS processes")
    args = parser.parse_args()
    answers = [q.answer for q in read_questions(shipped_text("questions.jsonl")) if q.answer]
    sentences = read_sentences(shipped_text("sentences.txt"))
    train_text = answers[N_TEST_QUESTIONS:] + sentences[:N_TRAIN_SENTENCES]
    test_text = answers[:N_TEST_QUESTIONS] + sentences[N_TRAIN_SENTENCES:]
    opts = SynthesisOptions(voices=[VOICE], rate_range=(1.0, 1.0), augment=AugmentConfig(enabled=False))
    train = build_asr(train_text, args.out / "train", opts, id_prefix="say", workers=args.workers)
    test = build_asr(test_text, args.out / "test", opts, id_prefix="say-test", workers=args.workers)
    extra = []
    if args.extra_text is not None:
        extra_text = read_sentences(args.extra_text)
        held_out = set(test_text)
        dropped = [t for t in extra_text if t in held_out]
        if dropped:
            extra_text = [t for t in extra_text if t not in held_out]
            print(f"{args.extra_text}: dropped {len(dropped)} sentences that are test text, e.g. {dropped[0]!r}")
        extra = build_asr(extra_text, args.out / "extra", opts, id_prefix="say-extra", workers=args.workers)

    units_dir = args.out / "units"
    if (units_dir / "centroids.safetensors").is_file():
        extractor = UnitExtractor.load(units_dir)
    else:
        extractor = UnitExtractor.for_config(UnitsConfig(layer=args.layer, k=args.k))
        stats = extractor.fit(load_audio(s.audio[0]) for s in train)
        extractor.save(units_dir)
        print(f"units: {stats}")
    for name, samples in (("train", train + extra), ("test", test)):
        path = args.out / f"{name}_units.jsonl"
        if path.is_file() and len(read_manifest(path)) == len(samples):
            continue
        units = extract_manifest(extractor, samples, load_audio)
        for s, u in zip(samples, units, strict=True):
            s.units = u
        write_manifest(path, samples)
        print(f"{path}: {len(samples)} utterances, {sum(len(u) for u in units)} frames")


if __name__ == "__main__":
    main()
