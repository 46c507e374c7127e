"""`speechllm chat`, `transcribe` and `serve`: the subcommands that run a model for a user.

`add_chat`, `add_transcribe` and `add_serve` each add one command's parser. This module imports
only the standard library at the top, so building a parser loads no torch and no optional extra.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SAMPLE_QUESTION = "What is the capital of France?"
TRANSCRIBE_CHUNK = 32
"""Files loaded and transcribed at a time (the engine batches them); bounds memory for big manifests."""


# ---------------------------------------------------------------------- chat


def add_chat(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("chat")
    p.add_argument("--audio", action="append", default=[], metavar="FILE", help="audio file (repeatable)")
    p.add_argument("--text", help="text of the turn, after the audio")
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override the model's config, e.g. bridge.beam_size=1 (repeatable)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--speak",
        metavar="OUT.wav",
        help="also speak the answer: write it to OUT.wav (16 kHz mono; each turn overwrites it) and play it",
    )
    p.add_argument("--speech", metavar="DIR", help="the speech output to speak with (default: the embedded one)")
    p.set_defaults(func=cmd_chat)


def _turn(audios: list[Any], text: str | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "audio", "audio": a} for a in audios]
    if text:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def _answer(
    engine: Any, conversation: list[dict[str, Any]], max_new_tokens: int, out: TextIO, speak: Path | None = None
) -> str:
    """Stream one answer to `out` and return it; with `speak`, also write its speech there and play it."""
    import numpy as np

    from speechllm.inference.engine import Audio, Delta, Done
    from speechllm.inference.generation import GenerationConfig

    request = engine.submit(conversation, GenerationConfig(max_new_tokens=max_new_tokens), speak=speak is not None)
    chunks: list[np.ndarray] = []
    for event in request.events():
        if isinstance(event, Delta):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Audio):
            chunks.append(event.samples)
        elif isinstance(event, Done):
            out.write("\n")
            out.flush()
            if speak is not None:
                _speak(speak, np.concatenate(chunks) if chunks else np.zeros(0, np.float32), engine.speech.sample_rate)
            return event.text
    raise AssertionError("the engine ended a request without Done")


def _speak(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    from speechllm.data.audio import save_wav

    path.parent.mkdir(parents=True, exist_ok=True)
    save_wav(path, audio, sample_rate)
    print(f"(spoken answer: {path}, {audio.shape[0] / sample_rate:.2f} s)", file=sys.stderr)
    if audio.size:
        play(path, audio, sample_rate)


def play(path: Path, audio: np.ndarray, sample_rate: int) -> bool:
    """Play through `sounddevice` (if installed) or `aplay` (if on PATH); False, with a log line, when
    neither can reach a sound device (a server, a container): the WAV file is the answer then."""
    try:
        import sounddevice  # type: ignore[import-not-found]
    except ImportError:
        sounddevice = None
    if sounddevice is not None:
        try:
            sounddevice.play(audio, sample_rate)
            sounddevice.wait()
            return True
        except Exception as e:  # PortAudio raises its own error types when no device is there
            log.info("sounddevice cannot play (%s)", e)
    aplay = shutil.which("aplay")
    if aplay is not None:
        done = subprocess.run([aplay, "-q", str(path)], capture_output=True, check=False)
        if done.returncode == 0:
            return True
        log.info("aplay cannot play: %s", done.stderr.decode(errors="replace").strip())
    log.info("no sound device to play %s on (install sounddevice, or alsa-utils for aplay)", path)
    return False


def _speech_output(model: Any, directory: str | None) -> Any:
    """The speech output in `directory`, or the embedded default; ValueError when there is none."""
    from speechllm.speech_out.streaming import load_speech_output

    if directory is not None:
        return load_speech_output(directory, model.llm, text_decoder(model))
    speech = load_default_speech_output(model)
    if speech is None:
        raise ValueError(
            "no speech output to speak with: none is embedded in this build; pass --speech DIR "
            "(a folder written by `speechllm speech pack`)"
        )
    return speech


def load_default_speech_output(model: Any) -> Any:
    """The embedded speech output (a SpeechOutput reading `model`'s LLM embeddings); None when this
    build ships none."""
    from speechllm import defaults
    from speechllm.speech_out.streaming import load_speech_output

    if not defaults.DEFAULT_SPEECH.is_dir():
        return None
    return load_speech_output(defaults.DEFAULT_SPEECH, model.llm, text_decoder(model))


def text_decoder(model: Any) -> Any:
    """LLM token ids -> answer text, for a speech output that speaks the text."""
    tokenizer = model.processor.tokenizer
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _next_turn(prompt: str = "> ") -> dict[str, Any] | None:
    """Read the next user turn from the terminal: text, or `/audio FILE [text]`; None to stop."""
    from speechllm.data.audio import AudioError, load_audio

    while True:
        try:
            line = input(prompt).strip()
        except EOFError:
            return None
        if line in ("/quit", "/exit"):
            return None
        if not line:
            continue
        if not line.startswith("/audio "):
            return _turn([], line)
        path, _, text = line[len("/audio ") :].strip().partition(" ")
        try:
            return _turn([load_audio(path)], text or None)
        except AudioError as e:
            print(f"(cannot use {path}: {e})", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> int:
    """The first turn comes from the arguments (or a spoken sample question); when stdin and stdout
    are both terminals, more turns follow. Only answers go to stdout; everything else to stderr."""
    from speechllm.data.audio import load_audio
    from speechllm.defaults import load_model
    from speechllm.inference.engine import Engine

    audios = [load_audio(p) for p in args.audio]
    text = args.text
    if not audios and not text:
        print(f"(no --audio or --text given: asking a spoken sample question: {SAMPLE_QUESTION!r})", file=sys.stderr)
        from speechllm.data.tts import EspeakEngine

        audios = [EspeakEngine().synthesize(SAMPLE_QUESTION, voice="en-us", rate=1.0)]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    conversation = [_turn(audios, text)]
    if args.speech and not args.speak:
        raise ValueError("--speech only chooses the voice of --speak OUT.wav; add --speak")
    model = load_model(args.model, args.overrides)
    speak = Path(args.speak) if args.speak else None
    speech = _speech_output(model, args.speech) if speak is not None else None
    with Engine(model, speech=speech, max_batch=1, max_queue=1) as engine:
        while True:
            answer = _answer(engine, conversation, args.max_new_tokens, sys.stdout, speak)
            conversation.append({"role": "assistant", "content": answer})
            if not interactive:
                return 0
            if len(conversation) == 2:
                print("(next turn: type text, or '/audio FILE [text]'; Ctrl-D or /quit ends)", file=sys.stderr)
            turn = _next_turn()
            if turn is None:
                return 0
            conversation.append(turn)


# ---------------------------------------------------------------------- transcribe


def _inputs(paths: list[str]) -> Iterator[tuple[str, str, str | None]]:
    """(label, path to read, manifest id) per audio: files as given, manifests expanded to their audio."""
    from speechllm.data.manifest import read_manifest

    for given in paths:
        if not given.endswith(".jsonl"):
            yield given, given, None
            continue
        written = read_manifest(given, resolve_paths=False)
        resolved = read_manifest(given)
        for raw, sample in zip(written, resolved):
            for label, path in zip(raw.audio, sample.audio):
                yield label, path, sample.id


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Transcripts through the speech LLM. A file that cannot be read gets an `error` (and exit
    status 1) instead of stopping the job; `--output` is written whole or not at all."""
    from speechllm.data.audio import AudioError, load_audio
    from speechllm.defaults import load_model
    from speechllm.inference.engine import Engine

    failed = 0
    records: list[dict[str, Any]] = []
    model = load_model(args.model, args.overrides)
    with Engine(model, max_batch=args.batch_size, max_queue=TRANSCRIBE_CHUNK) as engine:
        inputs = _inputs(args.files)
        # itertools.batched (Python 3.12) in 3.11: lists of TRANSCRIBE_CHUNK until the inputs run out.
        for chunk in iter(lambda: list(itertools.islice(inputs, TRANSCRIBE_CHUNK)), []):
            audios, ok = [], []
            for label, path, sample_id in chunk:
                record: dict[str, Any] = {"audio": label, "text": None}
                if sample_id is not None:
                    record["id"] = sample_id
                try:
                    audios.append(load_audio(path))
                    ok.append(record)
                except AudioError as e:
                    record["error"] = str(e)
                    failed += 1
                    print(f"speechllm transcribe: {e}", file=sys.stderr)
                records.append(record)
            for record, text in zip(ok, engine.transcribe(audios, max_new_tokens=args.max_new_tokens)):
                record["text"] = text
            if args.output is None:
                for record in records[-len(chunk) :]:
                    if record["text"] is not None:
                        print(f"{record['audio']}\t{record['text']}", flush=True)
    if args.output is not None:
        _write_jsonl(Path(args.output), records)
    return 1 if failed else 0


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from speechllm.atomic import atomic_write

    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from speechllm.defaults import load_model
    from speechllm.inference.engine import Engine
    from speechllm.serve.app import create_app
    from speechllm.serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        model_name=Path(args.model).name if args.model else "speechllm-default",
        api_key=args.api_key or os.environ.get("SPEECHLLM_API_KEY") or None,
        cors_origins=args.cors_origin,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        timeout=args.timeout,
        max_request_mb=args.max_request_mb,
        max_audio_seconds=args.max_audio_seconds,
    )
    model = load_model(args.model, args.overrides)
    speech = _serve_speech(model, args.speech)
    engine = Engine(model, speech=speech, max_batch=settings.max_batch, max_queue=settings.max_queue)
    try:
        spoken = "text and spoken answers" if speech is not None else "text answers only"
        print(f"serving {settings.model_name} ({spoken}) on http://{settings.host}:{settings.port}/", file=sys.stderr)
        uvicorn.run(create_app(engine, settings), host=settings.host, port=settings.port, log_level="warning")
    finally:
        engine.close()
    return 0


def _serve_speech(model: Any, directory: str | None) -> Any:
    """`--speech DIR` (must load), else the embedded speech output, else None: the server then
    answers in text only and refuses requests for audio with a 400."""
    if directory is not None:
        return _speech_output(model, directory)
    from speechllm.inference.engine import check_speech_output

    speech = load_default_speech_output(model)
    try:
        check_speech_output(model, speech)
    except ValueError as e:  # the embedded voice belongs to the embedded LLM; --model may be another
        log.warning("not speaking with the embedded speech output: %s", e)
        return None
    return speech


def add_transcribe(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("transcribe")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files, or .jsonl manifests")
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override the model's config, e.g. bridge.beam_size=1 (repeatable)")  # fmt: skip
    p.add_argument("--output", metavar="OUT.jsonl", help='write {"audio", "text"} per file here instead of stdout')
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_transcribe)


def add_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = _serve_defaults()
    p = sub.add_parser("serve")
    p.add_argument("--host", default=d.host, help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override the model's config, e.g. bridge.beam_size=1 (repeatable)")  # fmt: skip
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (or set SPEECHLLM_API_KEY)")
    p.add_argument("--cors-origin", nargs="*", default=[], metavar="ORIGIN", help="allow browsers from ORIGIN")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests before 429")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="requests generated together")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request before 504")
    p.add_argument("--max-request-mb", type=float, default=d.max_request_mb, help="body size before 413")
    p.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds, help="audio per request")
    p.add_argument(
        "--speech", metavar="DIR", help="speech output for spoken answers (default: the embedded one, if shipped)"
    )
    p.set_defaults(func=cmd_serve)


def _serve_defaults() -> Any:
    """ServeSettings' defaults, without importing FastAPI (settings.py imports nothing heavy)."""
    from speechllm.serve.settings import ServeSettings

    return ServeSettings()
