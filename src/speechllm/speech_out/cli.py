"""`speechllm units ...`, `speechllm vocoder ...` and `speechllm speech ...`: the speech output path.

speechllm units fit --manifest M --out DIR [--layer 3 --k 100]     k-means over encoder frames
speechllm units extract --model DIR --manifest M --out OUT.jsonl   frame-level units of each sample
speechllm vocoder train|synth ...                                  the unit vocoder
speechllm speech train-decoder --units U --out DIR                 the CTC speech decoder
speechllm speech pack [--units phonemes] --decoder D [--vocoder V] --out DIR   one speech-output folder
speechllm speech eval --speech DIR --manifest M                    intelligibility, latency, RTF

The trainers take typed configs (speechllm.speech_out.train_config); each training command reads
an optional YAML one (`--config`), then its flags and `--set key.path=value` on top, through the
one loader (`speechllm.config.load_yaml`), and calls the trainer with the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from speechllm.config import field_default, flag_overrides, load_yaml
from speechllm.speech_out.config import UnitsConfig
from speechllm.speech_out.train_config import (
    DecoderTrainConfig,
    DurationTrainConfig,
    VocoderSynthConfig,
    VocoderTrainConfig,
)

T = TypeVar("T")


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

    _add_vocoder(sub)

    speech = sub.add_parser("speech", help="the speech decoder and the packed speech output")
    ssub = speech.add_subparsers(dest="speech_command", required=True)
    from speechllm.speech_out import evaluate

    p = ssub.add_parser("train-decoder", help="train the CTC speech decoder on LLM states (LLM frozen)")
    _add_decoder_arguments(p)
    p.set_defaults(func=_train_decoder)
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
    p.set_defaults(func=lambda args: evaluate.run(evaluate.config_from_args(args)))


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


# --- trainers: flags -> a config through the one loader ------------------------------------------


def _add_config_arguments(p: argparse.ArgumentParser, cls: type) -> None:
    p.add_argument("--config", type=Path, help=f"a YAML {cls.__name__}; the flags and --set win over it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any field of the config, e.g. loop.precision=bf16 (repeatable)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")


def _load(cls: type[T], args: argparse.Namespace, flags: dict[str, str], base: dict[str, Any] | None = None) -> T:
    """`cls` from --config, then the given flags (`flags` maps each flag's dest to its config key), then --set."""
    given = flag_overrides({key: getattr(args, dest, None) for dest, key in flags.items()})
    return load_yaml(cls, args.config, [*given, *args.overrides], _schedule_base(cls, args) | (base or {}))


def _schedule_base(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """Defaults the loop takes from --steps and --eval-every, under the YAML (which may set them):
    warm-up over a tenth of the steps (at most the recipe's), a checkpoint at every evaluation."""
    loop: dict[str, Any] = {}
    if args.steps is not None:
        loop["warmup_steps"] = min(field_default(cls, "loop").warmup_steps, args.steps // 10)
    if getattr(args, "eval_every", None) is not None:
        loop["save_every"] = args.eval_every
    return {"loop": loop}


def _schedule_arguments(p: argparse.ArgumentParser, cls: type, evaluates: bool = True) -> None:
    loop = field_default(cls, "loop")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics.jsonl, model/)")
    p.add_argument("--steps", type=int, help=f"optimizer steps (default {loop.max_steps})")
    p.add_argument("--batch-size", type=int, help=f"default {field_default(cls, 'batch_size')}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {loop.lr})")
    if evaluates:
        p.add_argument("--eval-every", type=int, help=f"held-out figures every N steps (default {loop.eval_every})")
    every = "; with --eval-every, its N" if evaluates else ""
    p.add_argument("--save-every", type=int, help=f"checkpoint every N steps (default {loop.save_every}{every})")
    p.add_argument("--seed", type=int, help=f"default {loop.seed}")
    p.add_argument("--quiet", dest="progress", action="store_false", default=None, help="no progress bar")


SCHEDULE_FLAGS = {
    "out": "loop.out_dir",
    "steps": "loop.max_steps",
    "batch_size": "batch_size",
    "lr": "loop.lr",
    "eval_every": "loop.eval_every",
    "save_every": "loop.save_every",
    "seed": "loop.seed",
    "progress": "loop.progress",
}


def _add_decoder_arguments(p: argparse.ArgumentParser) -> None:
    def default(name: str) -> str:
        return f"default {field_default(DecoderTrainConfig, name)}"

    p.add_argument("--answers", nargs="+", help="answers JSONL files (id, question, answer): phoneme targets, no audio")
    p.add_argument("--dev-answers", nargs="+", help="held-out answers JSONL: phoneme error rate during training")
    p.add_argument("--units", help="units manifest of TTS answers (speechllm units extract): k-means targets")
    p.add_argument("--dev-units", help="held-out units manifest: unit error rate during training")
    p.add_argument("--dev-size", type=int, help=default("dev_size"))
    p.add_argument("--model", help="speech LLM directory whose LLM states are read (default: the embedded default)")
    p.add_argument("--questions", help="questions JSONL giving the prompt of each answer (default: shipped)")
    p.add_argument("--num-units", type=int, help="unit vocabulary K (default: from the data)")
    for name in ("upsample", "layers", "dim", "heads", "window"):
        p.add_argument(f"--{name}", type=int, help=default(name))
    p.add_argument(
        "--drop-over-upsample",
        action="store_true",
        default=None,
        help="leave out answers with more units per token than --upsample (default: refuse to train)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1)")
    _schedule_arguments(p, DecoderTrainConfig)
    _add_config_arguments(p, DecoderTrainConfig)


DECODER_FLAGS = {
    **{k: k for k in ("answers", "dev_answers", "units", "dev_units", "dev_size", "model", "questions", "num_units")},
    **{k: k for k in ("upsample", "layers", "dim", "heads", "window", "drop_over_upsample", "threads")},
    **SCHEDULE_FLAGS,
}


def _train_decoder(args: argparse.Namespace) -> int:
    from speechllm.speech_out.train_decoder import train

    train(_load(DecoderTrainConfig, args, DECODER_FLAGS), resume=args.resume)
    return 0


def _add_vocoder(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`vocoder train`, `vocoder train-durations` and `vocoder synth`."""
    vocoder = sub.add_parser(
        "vocoder",
        help="train the unit vocoder, or voice units with it",
        description=VOCODER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = vocoder.add_subparsers(dest="vocoder_command", required=True)

    p = commands.add_parser("train", help="train a vocoder on a units manifest")
    p.add_argument("--units", type=Path, required=True, help="units manifest (JSONL: id, audio, units at 50 Hz)")
    p.add_argument("--segment-frames", type=int, help="scored frames per segment (default 64 = 1.28 s)")
    p.add_argument("--num-units", type=int, help="unit vocabulary size (default 100)")
    p.add_argument("--duration-lookahead", type=int, help="units ahead each duration hears (default 0)")
    p.add_argument("--duration-layers", type=int, help="duration predictor layers (default 2)")
    p.add_argument(
        "--init-from", type=Path, help="a trained vocoder folder to start from (fine-tuning), with its architecture"
    )
    _schedule_arguments(p, VocoderTrainConfig, evaluates=False)
    _add_config_arguments(p, VocoderTrainConfig)
    p.set_defaults(func=_train_vocoder)

    p = commands.add_parser("train-durations", help="give a trained vocoder a new duration predictor")
    p.add_argument("--model", type=Path, required=True, help="a trained vocoder folder (its generator is kept)")
    p.add_argument("--units", type=Path, required=True, help="units manifest to learn durations from")
    p.add_argument("--dev-units", type=Path, help="held-out units manifest: L1, exact share and rate")
    p.add_argument("--lookahead", type=int, help="units ahead each duration hears (default 2)")
    p.add_argument("--layers", type=int, help="default 2")
    p.add_argument("--kernel", type=int, help="default 3")
    _schedule_arguments(p, DurationTrainConfig)
    _add_config_arguments(p, DurationTrainConfig)
    p.set_defaults(func=_train_durations)

    p = commands.add_parser("synth", help="units -> WAV with a trained vocoder")
    p.add_argument("--model", type=Path, required=True, help="a directory written by training (<out>/model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--units", help='unit ids separated by spaces or commas, e.g. "12 7 93 4"')
    source.add_argument("--units-file", type=Path, help="a units manifest; voices the line --id names")
    p.add_argument("--id", help="which utterance of --units-file (default: the first line)")
    p.add_argument("--durations", choices=["predict", "given"],
                   help="predict: merge repeats, durations from the predictor (default for --units); "
                        "given: repeats are frames, keep their run lengths (default for --units-file)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output WAV (16 kHz)")
    p.set_defaults(func=_synth)


VOCODER_HELP = """Train the unit vocoder on a units manifest, give it a new duration predictor, or voice units.

    speechllm vocoder train --units units.jsonl --out runs/vocoder [--steps N --batch-size B --lr LR --resume]
    speechllm vocoder train-durations --model runs/vocoder/model --units units.jsonl --lookahead 2 --out runs/dur
    speechllm vocoder synth --model runs/vocoder/model --units "12 7 93 4" --out out.wav
    speechllm vocoder synth --model runs/vocoder/model --units-file units.jsonl [--id ID] --out out.wav

A units manifest is JSONL, one utterance a line: id, audio (a 16 kHz WAV), frame-level units at 50 Hz.
"""

VOCODER_FLAGS = {
    "units": "units_manifest",
    "segment_frames": "segment_frames",
    "num_units": "vocoder.num_units",
    "duration_lookahead": "vocoder.duration_lookahead",
    "duration_layers": "vocoder.duration_layers",
    "init_from": "init_from",
    **SCHEDULE_FLAGS,
}


def _train_vocoder(args: argparse.Namespace) -> int:
    from speechllm.speech_out.vocoder_train import main

    base: dict[str, Any] = {}
    if args.init_from is not None:  # the starting vocoder's architecture, under the YAML and the flags
        from speechllm.speech_out.vocoder import CONFIG_FILE

        source = args.init_from / CONFIG_FILE
        if not source.is_file():
            raise FileNotFoundError(f"--init-from {args.init_from}: no {CONFIG_FILE}; not a vocoder folder")
        import yaml

        base["vocoder"] = yaml.safe_load(source.read_text())
    config = _load(VocoderTrainConfig, args, VOCODER_FLAGS, base)
    metrics = main(config, resume=args.resume)
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    print(f"model: {Path(config.loop.out_dir) / 'model'}")
    return 0


DURATION_FLAGS = {**{k: k for k in ("model", "units", "dev_units", "lookahead", "layers", "kernel")}, **SCHEDULE_FLAGS}


def _train_durations(args: argparse.Namespace) -> int:
    from speechllm.speech_out.duration_train import train_durations

    train_durations(_load(DurationTrainConfig, args, DURATION_FLAGS), resume=args.resume)
    return 0


def parse_units(text: str) -> list[int]:
    """ "12 7, 93" -> [12, 7, 93]; a token that is not an integer raises ValueError naming it."""
    tokens = text.replace(",", " ").split()
    for token in tokens:
        if not token.lstrip("-").isdigit():
            raise ValueError(f"--units must be integers separated by spaces or commas, got {token!r}")
    return [int(t) for t in tokens]


def _synth(args: argparse.Namespace) -> int:
    from speechllm.speech_out.vocoder_train import synth

    flags = {k: getattr(args, k) for k in ("model", "out", "units_file", "id", "durations")}
    flags["units"] = None if args.units is None else parse_units(args.units)
    out, units, seconds = synth(load_yaml(VocoderSynthConfig, None, flag_overrides(flags)))
    print(f"wrote {out}: {units} units, {seconds:.2f} s")
    return 0
