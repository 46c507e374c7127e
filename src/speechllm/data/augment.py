"""Signal augmentations for synthetic speech: speed, volume, additive noise at an SNR, telephone band,
and an A-law codec on the telephone line.

Every function takes and returns float32 mono audio at 16 kHz; randomness comes only from the
`np.random.Generator` passed in, so a seeded job produces the same audio on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechllm.data.audio import SAMPLE_RATE, resample


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (pitch moves with it, as in Kaldi speed perturbation). (N,) -> (N/factor,)."""
    if not 0.25 <= factor <= 4.0:
        raise ValueError(f"speed factor must be in [0.25, 4], got {factor}")
    # Reading the samples as if recorded at factor*16k and resampling to 16k compresses time by factor.
    return resample(audio, round(SAMPLE_RATE * factor), SAMPLE_RATE)


def change_volume(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by `gain_db` decibels, then clip to [-1, 1]."""
    return np.clip(audio * np.float32(10.0 ** (gain_db / 20.0)), -1.0, 1.0).astype(np.float32)


def make_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of `n` samples: "white" (flat spectrum) or "pink" (power falling as 1/f)."""
    white = rng.standard_normal(n).astype(np.float32)
    if color == "white":
        noise = white
    elif color == "pink":
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1] if n > 1 else 1.0  # the DC bin would divide by zero
        noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=n).astype(np.float32)
    else:
        raise ValueError(f"noise color must be 'white' or 'pink', got {color!r}")
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Add generated noise so that signal power / noise power = `snr_db` decibels."""
    signal_rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if signal_rms == 0.0:
        return audio.astype(np.float32)
    noise = make_noise(len(audio), color, rng) * np.float32(signal_rms / 10.0 ** (snr_db / 20.0))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def quantise(compressed: np.ndarray, bits: int) -> np.ndarray:
    """A companded signal in [-1, 1] rounded to a `bits`-bit codec's 2^(bits-1) - 1 levels a side."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    levels = 2 ** (bits - 1) - 1
    return np.round(compressed * levels) / levels


def a_law(audio: np.ndarray, bits: int = 8, a: float = 87.6) -> np.ndarray:
    """Compress with A-law (G.711's European law), quantise to `bits` bits, expand: the codec's round
    trip. (N,) -> (N,). The held-out telephone sets use mu-law (`channel.mu_law`); training draws this one."""
    x = np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0)
    mag, log_a = np.abs(x), 1.0 + np.log(a)
    small = mag < 1.0 / a
    compressed = np.where(small, a * mag / log_a, (1.0 + np.log(np.maximum(a * mag, 1.0))) / log_a)
    q = quantise(compressed, bits)
    expanded = np.where(q < 1.0 / log_a, q * log_a / a, np.exp(q * log_a - 1.0) / a)
    return (np.sign(x) * expanded).astype(np.float32)


def telephone(
    audio: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0, codec_bits: int | None = None
) -> np.ndarray:
    """Narrow-band telephone sound: down to 8 kHz (through an A-law codec of `codec_bits` bits there,
    if given) and back, then band-pass `low_hz`..`high_hz`.

    The band-pass is a zero-phase FFT mask with 100 Hz cosine edges; steep enough for augmentation
    and free of the extra dependency an IIR design would need.
    """
    n = len(audio)
    line = resample(audio, SAMPLE_RATE, 8000)
    if codec_bits is not None:
        line = a_law(line, codec_bits)
    narrow = resample(line, 8000, SAMPLE_RATE)[:n]
    narrow = np.pad(narrow, (0, n - len(narrow)))
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
    edge = 100.0
    rise = np.clip((freqs - (low_hz - edge)) / edge, 0.0, 1.0)
    fall = np.clip(((high_hz + edge) - freqs) / edge, 0.0, 1.0)
    mask = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    return np.fft.irfft(spectrum * mask, n=n).astype(np.float32)


@dataclass
class AugmentConfig:
    """How often, and how strongly, each augmentation is drawn for one utterance."""

    speed_prob: float = 0.3
    speed_range: tuple[float, float] = (0.9, 1.1)
    volume_prob: float = 0.5
    volume_db_range: tuple[float, float] = (-12.0, 3.0)
    noise_prob: float = 0.4
    snr_db_range: tuple[float, float] = (10.0, 30.0)
    noise_colors: tuple[str, ...] = ("white", "pink")
    telephone_prob: float = 0.1
    codec_prob: float = 0.0
    """Of the telephone-band utterances, the share that also goes through an A-law codec (7 or 8 bits)
    with band edges drawn around 300-3400 Hz (low 250-350, high 3100-3600). 0 draws nothing more,
    so the utterances of a seed made before this field existed stay the same."""
    enabled: bool = True


def draw_augmentation(cfg: AugmentConfig, rng: np.random.Generator) -> dict[str, float | str | bool]:
    """Draw one utterance's augmentation as a small JSON-able dict (recorded in the manifest's meta)."""
    if not cfg.enabled:
        return {}
    spec: dict[str, float | str | bool] = {}
    if rng.random() < cfg.speed_prob:
        spec["speed"] = round(float(rng.uniform(*cfg.speed_range)), 3)
    if rng.random() < cfg.telephone_prob:
        spec["telephone"] = True
    if rng.random() < cfg.noise_prob:
        spec["snr_db"] = round(float(rng.uniform(*cfg.snr_db_range)), 1)
        spec["noise"] = str(rng.choice(list(cfg.noise_colors)))
    if rng.random() < cfg.volume_prob:
        spec["gain_db"] = round(float(rng.uniform(*cfg.volume_db_range)), 1)
    if cfg.codec_prob > 0 and spec.get("telephone") and rng.random() < cfg.codec_prob:  # drawn last: see codec_prob
        spec["codec_bits"] = int(rng.choice([7, 8]))
        spec["band_low_hz"] = round(float(rng.uniform(250, 350)))
        spec["band_high_hz"] = round(float(rng.uniform(3100, 3600)))
    return spec


def apply_augmentation(audio: np.ndarray, spec: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply a spec from `draw_augmentation`, in the order speed, telephone (with its codec), noise, volume."""
    unknown = set(spec) - {
        "speed",
        "telephone",
        "snr_db",
        "noise",
        "gain_db",
        "codec_bits",
        "band_low_hz",
        "band_high_hz",
    }
    if unknown:
        raise ValueError(f"unknown augmentation keys {sorted(unknown)}")
    if "speed" in spec:
        audio = change_speed(audio, float(spec["speed"]))
    if spec.get("telephone"):
        low, high, bits = spec.get("band_low_hz", 300.0), spec.get("band_high_hz", 3400.0), spec.get("codec_bits")
        audio = telephone(audio, float(low), float(high), None if bits is None else int(bits))
    if "snr_db" in spec:
        audio = add_noise(audio, float(spec["snr_db"]), rng, str(spec.get("noise", "white")))
    if "gain_db" in spec:
        audio = change_volume(audio, float(spec["gain_db"]))
    return audio.astype(np.float32, copy=False)
