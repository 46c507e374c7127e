"""Which extra to install for a missing module: read from speechllm's optional dependencies.

The extras are those of pyproject.toml's `[project.optional-dependencies]`, as the installed
package's metadata records them (or pyproject.toml itself when running from a source tree).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

# Import names that differ from the name of the distribution providing them.
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "multipart": "python-multipart", "piper": "piper-tts", "yaml": "pyyaml"}
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def optional_dependencies() -> dict[str, list[str]]:
    """extra -> the normalized names of the distributions it installs."""
    extras: dict[str, list[str]] = {}
    try:
        requirements = metadata.requires("speechllm") or []
    except metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        if found and name:
            extras.setdefault(found.group(1), []).append(normalize(name.group(0)))
    if not extras and PYPROJECT.is_file():
        table = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"].get("optional-dependencies", {})
        for extra, requirements in table.items():
            extras[extra] = [normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements]  # type: ignore[union-attr]
    return extras


def extra_for(module: str, preferred: str | None = None) -> str | None:
    """The extra that installs `module` (an import name): `preferred` when it does, else the smallest
    extra that does (never `dev`); None when no extra does."""
    top = module.split(".")[0]
    distribution = normalize(DISTRIBUTION_OF.get(top, top))
    extras = {extra: names for extra, names in optional_dependencies().items() if distribution in names}
    if preferred in extras:
        return preferred
    candidates = sorted((len(names), extra) for extra, names in extras.items() if extra != "dev")
    return candidates[0][1] if candidates else None


def missing_dependency_message(error: ModuleNotFoundError, preferred: str | None = None) -> str | None:
    """One line saying what to install for `error`; None when the missing module is part of speechllm
    (a bug, not an install step)."""
    module = error.name or ""
    top = module.split(".")[0]
    if not top or top == "speechllm":
        return None
    extra = extra_for(top, preferred)
    if extra is not None:
        return f"needs the '{extra}' extra: pip install 'speechllm[{extra}]' (missing module {top!r})"
    return f"needs the module {top!r}, which is not installed: pip install {DISTRIBUTION_OF.get(top, top)}"
