"""Whisper log-mel features, computed by transformers' `WhisperFeatureExtractor`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from transformers import WhisperFeatureExtractor

from speechllm.config import SAMPLE_RATE, EncoderConfig
from speechllm.model.encoder import TAIL_MARGIN_FRAMES

HOP = 160  # samples per mel frame: 100 frames a second
WINDOW_SAMPLES = 30 * SAMPLE_RATE


class LogMel:
    """Audio (16 kHz mono float32) -> log-mel features for the Whisper encoder.

    `pad_to_30s=False` keeps each audio's real length (the batch is padded to its longest item);
    `True` pads every audio with silence to a whole number of 30 s windows, as Whisper was trained
    (padding in the audio domain, so padded frames hold the log-mel of silence, not zeros).
    `margin` appends that many frames of silence (audio domain) past each audio's reported length:
    what the `tail` encoder reads after the speech (`encoder.padding`).
    """

    def __init__(self, n_mels: int = 80, pad_to_30s: bool = False, margin: int = 0) -> None:
        if margin < 0:
            raise ValueError(f"LogMel margin must be >= 0 frames, got {margin}")
        self.n_mels = n_mels
        self.pad_to_30s = pad_to_30s
        self.margin = margin
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
        elif self.margin:
            audios = [np.pad(a, (0, self.margin * HOP)) for a in audios]
        # The extractor pads the batch with zeros to its longest item.
        out = self._extractor(
            audios, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="longest", truncation=False
        )
        feats = np.asarray(out.input_features, dtype=np.float32)
        if not self.pad_to_30s:
            feats = feats[..., : int(lengths.max()) + self.margin]
        return torch.from_numpy(np.ascontiguousarray(feats)), lengths


def log_mel_for(config: EncoderConfig) -> LogMel:
    """The features an encoder of `config` reads: its mel bins, and the silence its `padding` needs."""
    margin = TAIL_MARGIN_FRAMES if config.padding == "tail" else 0
    return LogMel(config.n_mels, pad_to_30s=config.padding == "30s", margin=margin)
