"""Audio input: every format, any rate and channel count, and every bad input named clearly."""

import numpy as np
import pytest
import soundfile as sf

from speechllm.data.audio import SAMPLE_RATE, AudioError, decode_audio_bytes, load_audio, resample, save_wav


def sine(freq: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    ("fmt", "subtype", "sr", "channels"),
    [
        ("WAV", "PCM_16", 16000, 1),
        ("WAV", "PCM_24", 48000, 2),
        ("WAV", "FLOAT", 8000, 1),
        ("FLAC", "PCM_16", 44100, 2),
        ("OGG", "VORBIS", 22050, 1),
        ("MP3", "MPEG_LAYER_III", 44100, 2),
    ],
)
def test_formats_rates_and_channels_become_16k_mono(tmp_path, fmt, subtype, sr, channels):
    x = sine(440.0, sr)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # MP3 and Vorbis add encoder delay/padding of a few ms.
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert abs(peak_hz(audio) - 440.0) < 5.0
    assert 0.3 < np.abs(audio).max() < 0.6


def test_channels_are_averaged(tmp_path):
    left, right = sine(440.0, 16000), np.zeros(16000, np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav"), left / 2, atol=1e-6)


def test_resample_44k1_sine_keeps_its_frequency():
    out = resample(sine(440.0, 44100, 2.0), 44100, SAMPLE_RATE)
    assert len(out) == 2 * SAMPLE_RATE
    assert abs(peak_hz(out) - 440.0) < 1.0


def test_decode_bytes_matches_file(tmp_path):
    path = tmp_path / "a.mp3"
    sf.write(path, sine(300.0, 24000), 24000, format="MP3")
    np.testing.assert_array_equal(decode_audio_bytes(path.read_bytes()), load_audio(path))


def test_save_wav_round_trip_and_clipping(tmp_path):
    x = sine(220.0, SAMPLE_RATE) * 3.0  # beyond full scale: clipped on write
    save_wav(tmp_path / "o.wav", x)
    back = load_audio(tmp_path / "o.wav")
    assert back.shape == x.shape and np.abs(back).max() <= 1.0
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        save_wav(tmp_path / "bad.wav", np.zeros((2, 3)))


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"e\.wav: empty file"):
        load_audio(tmp_path / "e.wav")
    with pytest.raises(AudioError, match="empty input"):
        decode_audio_bytes(b"")


def test_not_audio(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio at all, just some text " * 10)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        load_audio(tmp_path / "notes.wav")
    with pytest.raises(AudioError, match="upload: not a readable audio file"):
        decode_audio_bytes(b"\x00\x01garbage" * 50, name="upload")


def test_zero_length_audio(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"z\.wav: contains no audio samples"):
        load_audio(tmp_path / "z.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = sine(440.0, 16000)
    x[100] = bad
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"n\.wav: contains NaN or infinite samples"):
        load_audio(tmp_path / "n.wav")


def test_too_long(tmp_path):
    sf.write(tmp_path / "long.flac", np.zeros(16000 * 3, np.float32), 16000)
    with pytest.raises(AudioError, match=r"long\.flac: 3\.0 s long, beyond the limit of 2\.0 s"):
        load_audio(tmp_path / "long.flac", max_seconds=2.0)
    assert len(load_audio(tmp_path / "long.flac", max_seconds=3.0)) == 48000
