"""A telephone channel for evaluation audio: 8 kHz, 300-3400 Hz, 8-bit mu-law (G.711-like), back at 16 kHz.

`augment.telephone` gives the band; this adds the companding noise of an 8-bit mu-law codec, applied
at 8 kHz as on a real line, so held-out "telephone" sets sound like a call rather than a filter.
Deterministic: the same input gives the same output.
"""

from __future__ import annotations

import numpy as np

from speechllm.data.audio import SAMPLE_RATE, resample
from speechllm.data.augment import quantise, telephone

LINE_RATE = 8000
"""Sample rate of the narrow-band line (G.711)."""


def mu_law(audio: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """Compress with mu-law, quantise to `bits` bits, expand again: the codec's round trip. (N,) -> (N,)."""
    x = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    quantised = quantise(compressed, bits)
    expanded = np.sign(quantised) * ((1.0 + mu) ** np.abs(quantised) - 1.0) / mu
    return expanded.astype(np.float32)


def telephone_channel(audio: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """16 kHz speech as heard over a narrow-band line: down to 8 kHz, mu-law 8 bit, up to 16 kHz, band-pass.

    (N,) float32 at 16 kHz -> (N,) float32 at 16 kHz (length preserved).
    """
    n = len(audio)
    line = mu_law(resample(np.asarray(audio, dtype=np.float32), SAMPLE_RATE, LINE_RATE))
    wide = resample(line, LINE_RATE, SAMPLE_RATE)[:n]
    wide = np.pad(wide, (0, n - len(wide)))
    # The band-pass comes last so that the codec's quantisation noise is limited to the band too.
    return telephone(wide, low_hz, high_hz)
