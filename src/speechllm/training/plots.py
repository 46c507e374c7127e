"""Training curves from `metrics.jsonl`: loss and learning rate vs step, and every `eval/` metric.

Needs matplotlib (the `train` extra). Draws on a bare `Figure` (Agg canvas), so it never touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from speechllm.atomic import atomic_path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a torn last line (a killed run) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Write a PNG of the curves in `metrics_path` to `out_path` (atomically) and return its path."""
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    eval_keys = sorted({k for r in records for k in r if k.startswith("eval/")})
    panels = ["loss", "lr", *eval_keys]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    for i, key in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = _series(records, key)
        ax.plot(steps, values, marker="o" if key.startswith("eval/") else None, markersize=3)
        if key == "loss" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_path
