"""Manifests: the one on-disk format for every speechllm dataset, JSON Lines with one `Sample` a line.

Schema of a line (all keys required except `units`, `voice`, `meta`)::

    {
      "id": "asr-000042",                       # unique within the manifest
      "task": "asr",                            # asr | instruct | translate | ... (free string)
      "audio": ["wav/asr-000042.wav"],          # paths, relative to the manifest's folder or absolute
      "messages": [                             # the conversation up to the turn to be produced
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
          {"type": "text", "text": "Transcribe the audio."},
          {"type": "audio", "audio": 0}         # index into "audio"
        ]}
      ],
      "target": "The kettle boiled twice.",     # the assistant turn the model should produce
      "units": null,                            # optional discrete speech units of the target
      "voice": "espeak:en-us+f2",               # optional; the TTS voice ("engine:voice") or speaker
      "meta": {"rate": 1.1, "augment": {"snr_db": 18.5, "noise": "pink"}}
    }

`content` is a plain string or a list of parts; every audio file is referenced by exactly the
parts that name its index. Paths are resolved against the manifest's folder by `read_manifest`
and written back relative to it by `write_manifest`, so a dataset folder can be moved whole.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speechllm.atomic import atomic_write

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


class ManifestError(ValueError):
    """A manifest line that is not a valid `Sample`; the message names the file and line number."""


@dataclass
class Sample:
    """One training or evaluation example. See the module docstring for the JSON form."""

    id: str
    """Unique within its manifest; also the key of its features in a `FeatureCache`."""
    task: str
    """What the example teaches: "asr", "instruct", "translate", ..."""
    audio: list[str]
    """Audio file paths; message parts refer to them by index."""
    messages: list[dict[str, Any]]
    """Chat turns before the target: {"role": ..., "content": str | [{"type": "text"|"audio", ...}]}."""
    target: str
    """The text the model should produce as the next assistant turn."""
    units: list[int] | None = None
    """Discrete speech units of the target, for speech output training."""
    voice: str | None = None
    """Who speaks the audio: a TTS voice "engine:voice" or a speaker id."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: TTS rate, augmentation, source line ..."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"{self.id}: task must be a non-empty string, got {self.task!r}")
        if not isinstance(self.audio, list) or not all(isinstance(a, str) for a in self.audio):
            raise ValueError(f"{self.id}: audio must be a list of path strings, got {self.audio!r}")
        if not isinstance(self.target, str):
            raise ValueError(f"{self.id}: target must be a string, got {type(self.target).__name__}")
        if self.units is not None and not (
            isinstance(self.units, list) and all(isinstance(u, int) for u in self.units)
        ):
            raise ValueError(f"{self.id}: units must be null or a list of ints")
        if self.voice is not None and not isinstance(self.voice, str):
            raise ValueError(f"{self.id}: voice must be null or a string, got {self.voice!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"{self.id}: meta must be an object, got {type(self.meta).__name__}")
        self._check_messages()

    def _check_messages(self) -> None:
        if not isinstance(self.messages, list) or not self.messages:
            raise ValueError(f"{self.id}: messages must be a non-empty list of chat turns")
        used: set[int] = set()
        for i, turn in enumerate(self.messages):
            where = f"{self.id}: messages[{i}]"
            if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
                raise ValueError(f"{where} must have exactly the keys role and content, got {turn!r}")
            if turn["role"] not in ROLES:
                raise ValueError(f"{where}: role must be one of {ROLES}, got {turn['role']!r}")
            content = turn["content"]
            if isinstance(content, str):
                continue
            if not isinstance(content, list):
                raise ValueError(f"{where}: content must be a string or a list of parts")
            for part in content:
                index = self._check_part(part, where)
                if index is not None:
                    used.add(index)
        if used != set(range(len(self.audio))):
            raise ValueError(
                f"{self.id}: audio parts refer to indices {sorted(used)} but there are "
                f"{len(self.audio)} audio files (each must be referenced)"
            )

    def _check_part(self, part: Any, where: str) -> int | None:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and set(part) == {"type", "text"} and isinstance(part["text"], str):
            return None
        if kind == "audio" and set(part) == {"type", "audio"} and isinstance(part["audio"], int):
            if not 0 <= part["audio"] < len(self.audio):
                raise ValueError(f"{where}: audio index {part['audio']} out of range 0..{len(self.audio) - 1}")
            return part["audio"]
        raise ValueError(
            f"{where}: a part must be {{type: text, text: str}} or {{type: audio, audio: int}}, got {part!r}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        if not isinstance(d, dict):
            raise ValueError(f"a sample must be a JSON object, got {type(d).__name__}")
        known = {"id", "task", "audio", "messages", "target", "units", "voice", "meta"}
        missing = {"id", "task", "audio", "messages", "target"} - set(d)
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        if set(d) - known:
            raise ValueError(f"unknown keys {sorted(set(d) - known)} (put extra fields under meta)")
        return cls(**d)


def _resolve(path: str, root: Path) -> str:
    return path if os.path.isabs(path) else str(root / path)


def _relativize(path: str, root: Path) -> str:
    if not os.path.isabs(path):
        return path
    try:
        return Path(path).relative_to(root.resolve()).as_posix()
    except ValueError:
        return path  # outside the manifest's folder: keep absolute


def parse_line(line: str, path: Path, lineno: int) -> Sample:
    """One manifest line -> `Sample`, or `ManifestError` naming `path:lineno`."""
    try:
        return Sample.from_dict(json.loads(line))
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise ManifestError(f"{path}:{lineno}: {e}") from e


def iter_manifest(path: str | os.PathLike[str], *, resolve_paths: bool = True) -> Iterator[Sample]:
    """Yield samples line by line. Blank lines are allowed; any other bad line raises ManifestError."""
    path = Path(path)
    root = path.resolve().parent
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            sample = parse_line(line, path, lineno)
            if resolve_paths:
                sample.audio = [_resolve(a, root) for a in sample.audio]
            yield sample


def read_manifest(path: str | os.PathLike[str], *, resolve_paths: bool = True) -> list[Sample]:
    """Read a whole manifest. Audio paths become absolute unless `resolve_paths=False`.

    Raises ManifestError on a malformed line or a repeated id (nothing is skipped silently).
    """
    samples = list(iter_manifest(path, resolve_paths=resolve_paths))
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ManifestError(f"{path}: id {s.id!r} appears more than once")
        seen.add(s.id)
    return samples


def _dump(sample: Sample, root: Path) -> str:
    d = sample.to_dict()
    d["audio"] = [_relativize(a, root) for a in sample.audio]
    return json.dumps(d, ensure_ascii=False)


def write_manifest(path: str | os.PathLike[str], samples: Iterable[Sample]) -> None:
    """Write samples atomically (temp file + os.replace); absolute paths under the folder become relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    with atomic_write(path, durable=True) as f:
        for s in samples:
            f.write(_dump(s, root) + "\n")


class ManifestAppender:
    """Appends samples one line at a time, flushed, for jobs that must resume after a kill.

    On opening, a last line cut short by a crash (no trailing newline) is removed with a warning;
    that sample is then simply redone. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._root = self.path.resolve().parent
        self._repair_tail()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping an unfinished last line left by an interrupted run", self.path)
            f.truncate(keep)

    def append(self, sample: Sample) -> None:
        self._f.write(_dump(sample, self._root) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ManifestAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
