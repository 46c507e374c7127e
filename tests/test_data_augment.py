"""Augmentations: the intended effect, 16 kHz float32 out, and the same output for the same seed."""

import numpy as np
import pytest

from speechllm.data.augment import (
    AugmentConfig,
    a_law,
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


def test_a_law_round_trip_is_close_and_coarse():
    x = np.linspace(-1, 1, 2001, dtype=np.float32)
    y = a_law(x)
    assert np.max(np.abs(y - x)) < 0.04  # 8 bits: the largest steps are near full scale
    assert len(np.unique(y)) <= 255
    assert len(np.unique(a_law(x, bits=7))) <= 127
    np.testing.assert_allclose(a_law(np.array([0.0, 1e-3, -1e-3])), [0.0, 1e-3, -1e-3], atol=2e-4)
    with pytest.raises(ValueError, match="got 1"):
        a_law(x, bits=1)


def test_codec_is_drawn_only_on_the_telephone_line_and_leaves_old_draws_alone():
    old = AugmentConfig(speed_prob=1, noise_prob=1, volume_prob=1, telephone_prob=1)
    coded = AugmentConfig(speed_prob=1, noise_prob=1, volume_prob=1, telephone_prob=1, codec_prob=1)
    spec = draw_augmentation(coded, np.random.default_rng(3))
    assert spec["codec_bits"] in (7, 8) and 250 <= spec["band_low_hz"] <= 350 <= 3100 <= spec["band_high_hz"] <= 3600
    assert {
        k: v for k, v in spec.items() if k not in ("codec_bits", "band_low_hz", "band_high_hz")
    } == draw_augmentation(old, np.random.default_rng(3))
    no_line = AugmentConfig(telephone_prob=0, codec_prob=1)
    assert all("codec_bits" not in draw_augmentation(no_line, np.random.default_rng(s)) for s in range(20))
    x = tone(1000.0) + tone(6000.0)
    y = apply_augmentation(
        x, {"telephone": True, "codec_bits": 7, "band_low_hz": 300, "band_high_hz": 3200}, np.random.default_rng(0)
    )
    assert len(y) == len(x) and y.dtype == np.float32
    assert band_energy(y, 5900, 6100) < 1e-3 * band_energy(x, 5900, 6100)
    assert band_energy(y, 900, 1100) > 0.8 * band_energy(x, 900, 1100)
