"""Atomic writes: a file or a folder appears whole under its name, or not at all.

Everything is first written under a temporary name next to the target (same file system) and then
renamed onto it (`os.replace`), so a reader, or a job resumed after a kill, never sees a
half-written file. With `durable=True` the data and the rename are also flushed to disk (fsync)
before returning, for state a crash must not lose (training checkpoints, manifests).

Imports only the standard library: every layer may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"
"""Temporary names start with this (hidden, and recognisable for clean-up by the code that globs)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """A temporary file name next to `path` for a writer that takes a name (soundfile, matplotlib,
    safetensors, torch.save); on success it replaces `path`, on an error it is removed.

    The temporary name ends in `.tmp`, not in `path`'s suffix: give writers the format explicitly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the file is an ordinary one
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8", durable: bool = False
) -> Iterator[IO[Any]]:
    """`open(path, mode)` that replaces `path` only once the `with` block ends without an error."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes a new file: mode must start with 'w', got {mode!r}")
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
        f.flush()


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """A temporary folder next to `path` to fill; on success it takes `path`'s place (a folder
    already there is moved aside and then removed), on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}-"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        yield tmp
        if durable:
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync(f)
            _fsync(tmp)
        if path.exists():  # a folder cannot be renamed onto a non-empty one: move the old one aside
            old = path.with_name(f"{TMP_PREFIX}old-{path.name}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_write(path, durable=durable) as f:
        f.write(text)
