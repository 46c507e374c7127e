"""Audio input and output: every clip that enters speechllm becomes float32 mono at 16 kHz here.

`load_audio` and `decode_audio_bytes` read WAV, FLAC, OGG/Vorbis and MP3 (through libsndfile, which
reads MP3 from version 1.1, bundled with soundfile >= 0.12), at any sample rate and channel count.
Channels are averaged and the signal is resampled with soxr. Every problem raises `AudioError`
naming the source and what is wrong, so a bad file in a 100k-utterance job is found by its name.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from speechllm.atomic import atomic_path
from speechllm.config import SAMPLE_RATE


class AudioError(ValueError):
    """An audio source that cannot be used: missing, empty, not audio, silent-length, non-finite, too long."""


def load_audio(path: str | os.PathLike[str], *, max_seconds: float = 600.0) -> np.ndarray:
    """Read an audio file as float32 mono at 16 kHz.

    Returns:
        (N,) float32 array, N = duration * 16000.
    Raises:
        AudioError: the file is missing, empty, not audio, has no samples, holds NaN/inf,
            or lasts longer than `max_seconds`.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path), max_seconds)


def decode_audio_bytes(data: bytes, *, max_seconds: float = 600.0, name: str = "<bytes>") -> np.ndarray:
    """Decode an in-memory audio file (e.g. a base64-decoded WAV or MP3 upload) like `load_audio`.

    `name` only labels error messages.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{name}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise AudioError(f"{name}: empty input (0 bytes)")
    return _decode(io.BytesIO(bytes(data)), name, max_seconds)


def _decode(source: Any, name: str, max_seconds: float) -> np.ndarray:
    try:
        with sf.SoundFile(source) as f:
            sr, frames = f.samplerate, f.frames
            # Check the header's duration before reading, so a 10-hour file is refused cheaply.
            # MP3 frame counts are estimates; the length is checked again after decoding.
            if frames > 0 and frames / sr > max_seconds * 1.01:
                raise AudioError(f"{name}: {frames / sr:.1f} s long, beyond the limit of {max_seconds:.1f} s")
            audio = f.read(dtype="float32", always_2d=True)  # N, C
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{name}: not a readable audio file ({e})") from e
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples (zero length)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    mono = audio.mean(axis=1, dtype=np.float32)  # N, C -> N
    if mono.shape[0] / sr > max_seconds:
        raise AudioError(f"{name}: {mono.shape[0] / sr:.1f} s long, beyond the limit of {max_seconds:.1f} s")
    return resample(mono, sr, SAMPLE_RATE)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float signal with soxr (high quality). (N,) -> (N * target_sr / orig_sr,)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got orig_sr={orig_sr}, target_sr={target_sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def save_wav(path: str | os.PathLike[str], audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write a mono float signal as 16-bit PCM WAV, clipping to [-1, 1].

    The file is written under a temporary name and renamed, so an interrupted job never leaves a
    truncated WAV under the final name (resume logic trusts that a WAV that exists is whole).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"save_wav expects mono audio of shape (N,), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    path = Path(path)
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
