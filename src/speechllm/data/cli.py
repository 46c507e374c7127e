"""`speechllm data ...`: build synthetic speech datasets and splits from the command line.

speechllm data voices                       list TTS voices
speechllm data asr --out DIR [--text F]     sentences -> spoken ASR pairs
speechllm data instruct --out DIR [...]     questions -> spoken questions with text answers
speechllm data split --manifest M --heldout-voices 'espeak:en-029*'
speechllm data encode --manifest M --cache DIR   frozen-encoder features, once
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechllm.data.augment import AugmentConfig
from speechllm.data.manifest import read_manifest, write_manifest

DEFAULT_VOICES = ["espeak:*"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `data` command group to a CLI's subparsers."""
    data = subparsers.add_parser("data", help="build synthetic speech datasets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("voices", help="list the TTS voices")
    p.add_argument("--engine", nargs="+", default=["espeak"], choices=["espeak", "piper"])
    p.set_defaults(func=_voices)

    p = sub.add_parser("asr", help="speak sentences: ASR pairs")
    p.add_argument("--text", type=Path, help="one sentence a line (default: the shipped sentences.txt)")
    _add_synthesis_args(p)
    p.set_defaults(func=_asr)

    p = sub.add_parser("instruct", help="speak questions: spoken-instruction conversations")
    p.add_argument("--questions", type=Path, help="JSONL with question[, answer, id] (default: shipped)")
    p.add_argument("--answers", type=Path, help="JSONL mapping id or question -> answer, for questions without one")
    p.add_argument("--mixed-fraction", type=float, default=0.3,
                   help="share of samples that add a typed instruction to the spoken question")  # fmt: skip
    p.add_argument("--system-prompt", default=None)
    _add_synthesis_args(p)
    p.set_defaults(func=_instruct)

    p = sub.add_parser("encode", help="run the frozen encoder once over a manifest into a feature cache")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True, help="cache folder (created; resumes)")
    p.add_argument("--encoder", default="bundled:whisper-tiny.en", help="encoder source (see EncoderConfig)")
    p.add_argument("--padding", choices=["real", "30s"], default="real")
    p.add_argument("--layer", default="-1", help="hidden state to cache: -1 (last) or a layer index")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_encode)

    p = sub.add_parser("split", help="hold out voices: train/test manifests")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--heldout-voices", nargs="+", required=True, help="voice patterns, e.g. 'espeak:en-029*'")
    p.add_argument("--train", type=Path, help="default: <manifest>.train.jsonl")
    p.add_argument("--test", type=Path, help="default: <manifest>.test.jsonl")
    p.set_defaults(func=_split)


def _add_synthesis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (wav/ and the manifest); resumes")
    p.add_argument("--num", type=int, default=None, help="use the first NUM lines only")
    p.add_argument("--voices", nargs="+", default=DEFAULT_VOICES,
                   help="voice patterns 'engine:voice' (shell wildcards; default: all eSpeak English)")  # fmt: skip
    p.add_argument("--rate", type=float, nargs=2, default=(0.85, 1.25), metavar=("MIN", "MAX"))
    p.add_argument("--no-augment", action="store_true", help="clean audio: no speed/noise/volume/telephone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="synthesis processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from speechllm.data.builders import SynthesisOptions, select_voices

    engines = sorted({v.partition(":")[0] for v in args.voices})
    return SynthesisOptions(
        voices=select_voices(args.voices, engines),
        rate_range=tuple(args.rate),
        augment=AugmentConfig(enabled=not args.no_augment),
        seed=args.seed,
    )


def _voices(args: argparse.Namespace) -> None:
    from speechllm.data.tts import list_voices

    print("\n".join(list_voices(tuple(args.engine))))


def _asr(args: argparse.Namespace) -> None:
    from speechllm.data.builders import build_asr, read_sentences, shipped_text

    sentences = read_sentences(args.text or shipped_text("sentences.txt"))[: args.num]
    samples = build_asr(sentences, args.out, _options(args), workers=args.workers, progress=not args.quiet)
    print(f"{len(samples)} samples in {args.out / 'asr.jsonl'}")


def _instruct(args: argparse.Namespace) -> None:
    from speechllm.data.builders import build_instruct, read_answers, read_questions, shipped_text

    questions = read_questions(args.questions or shipped_text("questions.jsonl"))[: args.num]
    answers = read_answers(args.answers) if args.answers else None
    samples = build_instruct(
        questions, args.out, _options(args), answers=answers, mixed_fraction=args.mixed_fraction,
        system_prompt=args.system_prompt, workers=args.workers, progress=not args.quiet,
    )  # fmt: skip
    print(f"{len(samples)} samples in {args.out / 'instruct.jsonl'}")


def _encode(args: argparse.Namespace) -> None:
    from speechllm.config import EncoderConfig
    from speechllm.data.encoding import encoder_fn
    from speechllm.data.feature_cache import FeatureCache, encode_manifest
    from speechllm.model.encoder import load_whisper_encoder

    encoder = load_whisper_encoder(EncoderConfig(source=args.encoder, padding=args.padding, layer=int(args.layer)))
    with FeatureCache(args.cache, encoder.fingerprint()) as cache:
        stats = encode_manifest(read_manifest(args.manifest), cache, encoder_fn(encoder), args.batch_size)
    print(
        f"encoded {stats['encoded']:.0f} clips ({stats['audio_seconds']:.0f} s of audio), "
        f"skipped {stats['skipped']:.0f} already cached; real-time factor {stats['rtf']:.4f} -> {args.cache}"
    )


def _split(args: argparse.Namespace) -> None:
    from speechllm.data.builders import split_by_voice

    train, test = split_by_voice(read_manifest(args.manifest), args.heldout_voices)
    stem = args.manifest.with_suffix("")
    train_path = args.train or Path(f"{stem}.train.jsonl")
    test_path = args.test or Path(f"{stem}.test.jsonl")
    write_manifest(train_path, train)
    write_manifest(test_path, test)
    print(f"train: {len(train)} samples -> {train_path}\ntest: {len(test)} samples -> {test_path}")
