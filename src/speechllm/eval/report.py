"""Writing evaluation results: per-sample JSONL and a summary as JSON plus a Markdown table."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from speechllm.atomic import atomic_write_text

SummaryValue = float | int | str

# Metric names whose values are fractions in [0, 1] (or above, for WER) shown as percentages.
# BLEU and chrF are already on a 0–100 scale and are not listed.
_RATE_SUFFIXES = ("wer", "cer", "accuracy", "rate", "agreement")


def write_per_sample(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, not ASCII-escaped) atomically; returns the path.

    A row that is not JSON-serialisable raises ``TypeError`` and leaves any existing file intact.
    """
    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {i} must be a mapping; got {type(row).__name__}")
        lines.append(json.dumps(dict(row), ensure_ascii=False, allow_nan=False) + "\n")
    out = Path(path)
    atomic_write_text(out, "".join(lines))
    return out


def is_rate_key(key: str) -> bool:
    """Whether a summary key names a fraction to show as a percentage (e.g. "wer", "test_cer")."""
    return key.lower().rsplit("_", 1)[-1] in _RATE_SUFFIXES


def format_value(key: str, value: SummaryValue, percent_keys: Collection[str] | None = None) -> str:
    """Human-readable value: rates as "12.34%", other floats with 2 decimals, ints and strings as is."""
    if isinstance(value, int | str):  # bool is an int too
        return str(value)
    is_rate = key in percent_keys if percent_keys is not None else is_rate_key(key)
    return f"{100 * value:.2f}%" if is_rate else f"{value:.2f}"


def _check_summary(summary: Mapping[str, SummaryValue]) -> None:
    for key, value in summary.items():
        if not isinstance(key, str):
            raise TypeError(f"summary keys must be str; got {key!r} ({type(key).__name__})")
        if not isinstance(value, int | float | str):
            raise TypeError(f"summary[{key!r}] must be float, int or str; got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"summary[{key!r}] must be finite; got {value}")


def _md_cell(text: str) -> str:
    # A bare "|" would end the cell; newlines would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def write_summary(
    out_dir: str | os.PathLike[str],
    summary: Mapping[str, SummaryValue],
    title: str,
    percent_keys: Collection[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``summary.json`` (raw values) and ``summary.md`` (a titled table) into ``out_dir``.

    In the Markdown, keys chosen by ``percent_keys`` — by default those whose last "_"-separated
    part is wer, cer, accuracy, rate or agreement — are shown as percentages with 2 decimals, other
    floats with 2 decimals. Returns ``(json_path, md_path)``.
    """
    _check_summary(summary)
    out = Path(out_dir)
    json_path = out / "summary.json"
    md_path = out / "summary.md"
    payload = {"title": title, "metrics": dict(summary)}
    atomic_write_text(json_path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# {title}", "", "| metric | value |", "|---|---:|"]
    lines += [
        f"| {_md_cell(key)} | {_md_cell(format_value(key, value, percent_keys))} |" for key, value in summary.items()
    ]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path
