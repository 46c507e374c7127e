"""Data helpers of the speech-output trainers: units manifests and duration batches.

Both `vocoder train` and `vocoder train-durations` read units manifests (one JSON line per
utterance: id, audio, frame-level units at 50 a second) and learn durations from the run lengths
of those units; this module is the one place for both, so neither trainer imports the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechllm.model.ctc import run_lengths


@dataclass
class UnitsItem:
    id: str
    audio: Path
    units: list[int]
    """Frame-level unit ids, 50 a second."""


def read_units_manifest(path: str | Path, num_units: int | None = None) -> list[UnitsItem]:
    """Read a units manifest; every problem raises ValueError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"units manifest not found: {path}")
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(obj, dict) or not {"id", "audio", "units"} <= obj.keys():
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{where}: expected an object with id, audio and units, got {got}")
        units = obj["units"]
        if not isinstance(units, list) or not units or not all(type(u) is int for u in units):
            raise ValueError(f"{where}: units must be a non-empty list of ints, got {str(units)[:60]}")
        if num_units is not None:
            bad = [u for u in units if not 0 <= u < num_units]
            if bad:
                raise ValueError(f"{where}: units must lie in [0, {num_units}), got {bad[0]}")
        # A speechllm manifest (`speechllm units extract`) lists its audio files; the first is spoken.
        audio_field = obj["audio"][0] if isinstance(obj["audio"], list) and obj["audio"] else obj["audio"]
        audio = Path(str(audio_field))
        items.append(UnitsItem(str(obj["id"]), audio if audio.is_absolute() else path.parent / audio, units))
    if not items:
        raise ValueError(f"{path}: the manifest holds no utterances")
    return items


def duration_sequences(items: list[UnitsItem]) -> list[tuple[list[int], list[int]]]:
    """Each utterance's (units without repeats, frames each covered): the duration predictor's data."""
    return [run_lengths(item.units) for item in items]


def duration_batch(sequences: list[tuple[list[int], list[int]]], max_duration: int) -> dict[str, Tensor]:
    """(deduplicated units, durations) pairs -> units (B, U) padded with each row's last unit (the
    predictor's lookahead past the end, as synthesis does), log_durations (B, U) of durations capped
    at max_duration, unit_mask (B, U) 1 on real units."""
    longest = max(len(u) for u, _ in sequences)
    units = np.zeros((len(sequences), longest), dtype=np.int64)
    log_durations = np.zeros((len(sequences), longest), dtype=np.float32)
    mask = np.zeros((len(sequences), longest), dtype=np.float32)
    for row, (u, d) in enumerate(sequences):
        units[row, : len(u)], units[row, len(u) :] = u, u[-1]
        # Long silences exceed what the predictor may emit; it learns to saturate at the cap.
        log_durations[row, : len(u)] = np.log(np.minimum(d, max_duration))
        mask[row, : len(u)] = 1.0
    arrays = {"units": units, "log_durations": log_durations, "unit_mask": mask}
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def duration_l1(log_durations: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Mean L1 between predicted log durations (B, U) and the batch's, over its real units."""
    mask = batch["unit_mask"]
    return ((log_durations.float() - batch["log_durations"]).abs() * mask).sum() / mask.sum()
