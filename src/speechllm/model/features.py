"""Whisper log-mel features, computed by transformers' `WhisperFeatureExtractor`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from transformers import WhisperFeatureExtractor

from speechllm.config import SAMPLE_RATE

HOP = 160  # samples per mel frame: 100 frames a second
WINDOW_SAMPLES = 30 * SAMPLE_RATE


class LogMel:
    """Audio (16 kHz mono float32) -> log-mel features for the Whisper encoder.

    `pad_to_30s=False` keeps each audio's real length (the batch is padded to its longest item);
    `True` pads every audio with silence to a whole number of 30 s windows, as Whisper was trained
    (padding in the audio domain, so padded frames hold the log-mel of silence, not zeros).
    """

    def __init__(self, n_mels: int = 80, pad_to_30s: bool = False) -> None:
        self.n_mels = n_mels
        self.pad_to_30s = pad_to_30s
        self._extractor = WhisperFeatureExtractor(feature_size=n_mels)

    def __call__(self, audios: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """Returns features (B, n_mels, T) and real frame counts (B,)."""
        if not audios:
            raise ValueError("LogMel needs at least one audio, got an empty list")
        for i, a in enumerate(audios):
            if a.ndim != 1 or a.size == 0:
                raise ValueError(f"audio {i} must be a non-empty 1-D array of 16 kHz samples, got shape {a.shape}")
        lengths = torch.tensor([max(1, a.size // HOP) for a in audios])
        if self.pad_to_30s:
            audios = [np.pad(a, (0, -a.size % WINDOW_SAMPLES)) for a in audios]
        # The extractor pads the batch with zeros to its longest item.
        out = self._extractor(
            audios, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="longest", truncation=False
        )
        feats = np.asarray(out.input_features, dtype=np.float32)
        if not self.pad_to_30s:
            feats = feats[..., : int(lengths.max())]
        return torch.from_numpy(np.ascontiguousarray(feats)), lengths
