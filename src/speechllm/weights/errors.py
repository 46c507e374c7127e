from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class WeightsError(ValueError):
    """A weight file or directory is missing, corrupt, or of a kind we cannot load."""


def local_source(source: str, what: str, bundled: Iterable[str], expected: str, *, directory: bool) -> Path:
    """The local path a weights `source` names once it is not one of the `bundled` names: an unknown
    `bundled:` name, or a path that is not there (not a directory, when `directory`), raises a
    WeightsError naming the known bundled names or what was `expected`."""
    if source.startswith("bundled:"):
        raise WeightsError(f"unknown bundled {what} {source!r}; known: {sorted(bundled)}")
    path = Path(source).expanduser()
    if directory and not path.is_dir():
        raise WeightsError(f"{what} source {source!r} is not a directory (expected {expected})")
    if not path.exists():
        raise WeightsError(f"{what} source {source!r} does not exist (expected {expected})")
    return path
