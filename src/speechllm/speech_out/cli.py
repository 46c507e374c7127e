"""`speechllm units ...`, `speechllm vocoder ...` and `speechllm speech ...`: the speech output path.

speechllm units fit --manifest M --out DIR [--layer 3 --k 100]     k-means over encoder frames
speechllm units extract --model DIR --manifest M --out OUT.jsonl   frame-level units of each sample
speechllm vocoder train|synth ...                                  the unit vocoder
speechllm speech train-decoder --units U --out DIR                 the CTC speech decoder
speechllm speech pack [--units phonemes] --decoder D [--vocoder V] --out DIR   one speech-output folder
speechllm speech eval --speech DIR --manifest M                    intelligibility, latency, RTF
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from speechllm.speech_out.config import UnitsConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    units = sub.add_parser("units", help="discrete speech units (k-means over encoder frames)")
    usub = units.add_subparsers(dest="units_command", required=True)
    p = usub.add_parser("fit", help="fit the k-means units on a manifest's audio")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--encoder", default=UnitsConfig.encoder)
    p.add_argument("--layer", type=int, default=UnitsConfig.layer)
    p.add_argument("--k", type=int, default=UnitsConfig.k)
    p.add_argument("--max-frames", type=int, default=200_000)
    p.set_defaults(func=_units_fit)
    p = usub.add_parser("extract", help="write a copy of a manifest with each sample's frame-level units")
    p.add_argument("--model", required=True, type=Path, help="a folder written by `units fit`")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--switch-penalty", type=float, help="override the units' switch_penalty (see UnitsConfig)")
    p.set_defaults(func=_units_extract)

    from speechllm.speech_out import duration_train, vocoder_train

    commands = vocoder_train.add_parser(sub)
    p = commands.add_parser("train-durations", help="give a trained vocoder a new duration predictor")
    duration_train.add_arguments(p)
    p.set_defaults(func=lambda a: bool(duration_train.train_durations(a)) and 0)

    speech = sub.add_parser("speech", help="the speech decoder and the packed speech output")
    ssub = speech.add_subparsers(dest="speech_command", required=True)
    from speechllm.speech_out import evaluate, train_decoder

    p = ssub.add_parser("train-decoder", help="train the CTC speech decoder on LLM states (LLM frozen)")
    train_decoder.add_arguments(p)
    p.set_defaults(func=lambda a: bool(train_decoder.train(a)) and 0)
    p = ssub.add_parser("pack", help="put a trained decoder and vocoder into one speech-output folder")
    p.add_argument("--units", choices=["phonemes", "kmeans"], default="kmeans", help="what the decoder predicts")
    p.add_argument("--decoder", required=True, type=Path)
    p.add_argument("--vocoder", type=Path, help="k-means units: the trained unit vocoder (phonemes: none, the voice)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--first-chunk-units", type=int, default=10)
    p.add_argument("--chunk-units", type=int, default=20)
    p.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="stored weights (loaded back as float32)"
    )
    p.set_defaults(func=_pack)
    p = ssub.add_parser("eval", help="intelligibility (Whisper WER), latency and real-time factor")
    evaluate.add_arguments(p)
    p.set_defaults(func=evaluate.run)


def _units_fit(args: argparse.Namespace) -> int:
    from speechllm.data.audio import load_audio
    from speechllm.data.manifest import read_manifest
    from speechllm.speech_out.units import UnitExtractor

    samples = read_manifest(args.manifest)
    extractor = UnitExtractor.for_config(UnitsConfig(encoder=args.encoder, layer=args.layer, k=args.k))
    stats = extractor.fit((load_audio(s.audio[0]) for s in samples), max_frames=args.max_frames)
    extractor.save(args.out)
    print(json.dumps(stats))
    return 0


def _units_extract(args: argparse.Namespace) -> int:
    from speechllm.data.audio import load_audio
    from speechllm.data.manifest import read_manifest, write_manifest
    from speechllm.speech_out.units import UnitExtractor, extract_manifest

    samples = read_manifest(args.manifest)
    extractor = UnitExtractor.load(args.model)
    if args.switch_penalty is not None:
        extractor.config = dataclasses.replace(extractor.config, switch_penalty=args.switch_penalty)
    units = extract_manifest(extractor, samples, load_audio)
    for s, u in zip(samples, units, strict=True):
        s.units = u
    write_manifest(args.out, samples)
    print(f"{args.out}: {len(samples)} samples, {sum(map(len, units))} frames")
    return 0


def _pack(args: argparse.Namespace) -> int:
    import torch

    from speechllm.speech_out.decoder import SpeechDecoder
    from speechllm.speech_out.streaming import StreamingConfig, check_parts, save_parts
    from speechllm.speech_out.vocoder import UnitVocoder

    if (args.vocoder is None) != (args.units == "phonemes"):
        raise ValueError(f"--units {args.units} needs {'no' if args.units == 'phonemes' else 'a'} --vocoder")
    config = StreamingConfig(units=args.units, first_chunk_units=args.first_chunk_units, chunk_units=args.chunk_units)
    dtype = getattr(torch, args.dtype)
    decoder = SpeechDecoder.load(args.decoder).to(dtype)
    vocoder = UnitVocoder.load(args.vocoder).to(dtype) if args.vocoder else None
    if vocoder is None:
        from speechllm.speech_out.piper_voice import PiperVoice

        check_parts(decoder, PiperVoice(config.voice))
    save_parts(args.out, decoder, vocoder, config)
    print(args.out)
    return 0
