"""Data for the default model: eSpeak speech of the shipped text, held-out voices and sentences, cached features.

    python recipes/default_data.py --out data_out/default [--rounds 3]

- train: the first 1,200 shipped sentences, spoken `--rounds` times, each time with other voices
  drawn from 7 of the 8 eSpeak English accents (84 voices), rates and augmentation;
- test: the last 100 sentences (text never trained on) spoken by the held-out accent
  `en-gb-scotland` (12 voices never heard in training);
- instruct: spoken questions from the shipped questions.jsonl, train voices;
- the Whisper tiny.en features of everything, in one feature cache.
Every step resumes, so the command can be re-run after an interruption.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from speechllm.config import EncoderConfig
from speechllm.data import tts
from speechllm.data.builders import SynthesisOptions, build_asr, read_sentences, shipped_text
from speechllm.data.encoding import encoder_fn
from speechllm.data.feature_cache import FeatureCache, encode_manifest
from speechllm.data.manifest import Sample, read_manifest, write_manifest
from speechllm.model.encoder import load_whisper_encoder

HELDOUT = "espeak:en-gb-scotland*"
N_TRAIN_SENTENCES = 1200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data_out/default"))
    parser.add_argument("--rounds", type=int, default=3, help="times each training sentence is spoken")
    args = parser.parse_args()
    voices = tts.EspeakEngine().voices()
    voices = [f"espeak:{v}" if not v.startswith("espeak:") else v for v in voices]
    train_voices = [v for v in voices if not fnmatch.fnmatch(v, HELDOUT)]
    test_voices = [v for v in voices if fnmatch.fnmatch(v, HELDOUT)]
    sentences = read_sentences(shipped_text("sentences.txt"))
    train_text, test_text = sentences[:N_TRAIN_SENTENCES], sentences[N_TRAIN_SENTENCES:]

    train: list[Sample] = []
    for r in range(args.rounds):
        opts = SynthesisOptions(voices=train_voices, seed=100 + r)
        train += build_asr(train_text, args.out / f"asr-r{r}", opts, id_prefix=f"asr-r{r}")
    test = build_asr(test_text, args.out / "asr-test", SynthesisOptions(voices=test_voices, seed=7), id_prefix="test")
    write_manifest(args.out / "train.jsonl", train)
    write_manifest(args.out / "test.jsonl", test)

    encoder = load_whisper_encoder(EncoderConfig())
    with FeatureCache(args.out / "cache", encoder.fingerprint()) as cache:
        for name in ("train.jsonl", "test.jsonl"):
            stats = encode_manifest(read_manifest(args.out / name), cache, encoder_fn(encoder), batch_size=8)
            print(f"{name}: {stats['encoded']:.0f} encoded, rtf {stats['rtf']:.4f}")
    print(f"train {len(train)} utterances ({len(train_voices)} voices), test {len(test)} ({len(test_voices)} voices)")


if __name__ == "__main__":
    main()
