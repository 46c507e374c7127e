"""Augmentations: the intended effect, 16 kHz float32 out, and the same output for the same seed."""

import numpy as np
import pytest

from speechllm.data.augment import (
    AugmentConfig,
    add_noise,
    apply_augmentation,
    change_speed,
    change_volume,
    draw_augmentation,
    make_noise,
    telephone,
)


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_speed_changes_length():
    out = change_speed(tone(440.0), 1.25)
    assert out.dtype == np.float32 and abs(len(out) - 16000 / 1.25) <= 2
    with pytest.raises(ValueError, match="got 10"):
        change_speed(tone(440.0), 10)


def test_volume_in_decibels():
    np.testing.assert_allclose(change_volume(tone(440.0), -6.0).max(), 0.5 * 10 ** (-6 / 20), rtol=1e-3)


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_hits_the_requested_snr(color):
    x = tone(440.0, 2.0)
    y = add_noise(x, 10.0, np.random.default_rng(0), color)
    snr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
    assert abs(snr - 10.0) < 0.5


def test_pink_noise_has_more_low_than_high_energy():
    n = make_noise(32000, "pink", np.random.default_rng(0))
    assert band_energy(n, 50, 500) > 5 * band_energy(n, 5000, 5450)


def test_telephone_band():
    x = tone(100.0) + tone(1000.0) + tone(6000.0)
    y = telephone(x)
    assert len(y) == len(x)
    assert band_energy(y, 900, 1100) > 0.9 * band_energy(x, 900, 1100)
    assert band_energy(y, 50, 150) < 1e-3 * band_energy(x, 50, 150)
    assert band_energy(y, 5900, 6100) < 1e-3 * band_energy(x, 5900, 6100)


def test_drawn_augmentation_is_seeded_and_reproducible():
    cfg = AugmentConfig(speed_prob=1, noise_prob=1, volume_prob=1, telephone_prob=1)
    spec = draw_augmentation(cfg, np.random.default_rng(3))
    assert spec == draw_augmentation(cfg, np.random.default_rng(3))
    a = apply_augmentation(tone(440.0), spec, np.random.default_rng(1))
    b = apply_augmentation(tone(440.0), spec, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert draw_augmentation(AugmentConfig(enabled=False), np.random.default_rng(0)) == {}
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        apply_augmentation(tone(440.0), {"reverb": 1}, np.random.default_rng(0))
