"""CTC best-path collapse and run lengths: the one copy of each, for every caller.

`collapse` turns per-frame labels into output labels (repeats merged, blanks dropped); passing the
last label of the previous call as `previous` keeps a repeat that spans two calls merged, which is
what streaming decoders need. `run_lengths` turns a frame-level sequence into its values without
consecutive repeats and the frames each covered (no blank).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def collapse(labels: Iterable[int], blank: int, previous: int | None = None) -> list[int]:
    """Per-frame labels (T,) -> labels with consecutive repeats merged and `blank` dropped.

    `previous` is the frame label just before `labels` (the last one of the previous call when
    streaming); None or `blank` means there was none to merge with.
    """
    out: list[int] = []
    for label in labels:
        label = int(label)
        if label != blank and label != previous:
            out.append(label)
        previous = label
    return out


def run_lengths(seq: Sequence[int] | Iterable[int]) -> tuple[list[int], list[int]]:
    """Frame-level sequence (T,) -> (values without consecutive repeats (N,), frames each covered (N,))."""
    values: list[int] = []
    lengths: list[int] = []
    for item in seq:
        item = int(item)
        if values and values[-1] == item:
            lengths[-1] += 1
        else:
            values.append(item)
            lengths.append(1)
    return values, lengths


class StreamingCollapse:
    """`collapse` across calls: keeps the last frame label so a repeat split by a call boundary stays merged."""

    def __init__(self, blank: int) -> None:
        self.blank = blank
        self.previous: int | None = None

    def push(self, labels: Sequence[int]) -> list[int]:
        out = collapse(labels, self.blank, self.previous)
        if len(labels):
            self.previous = int(labels[-1])
        return out
