"""Fill a feature cache with a real Whisper encoder: the `encode_fn` that `encode_manifest` takes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from speechllm.model.encoder import WhisperEncoder
from speechllm.model.features import log_mel_for


def encoder_fn(encoder: WhisperEncoder) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Audios (16 kHz mono) -> the encoder's selected hidden state per audio, (T_i, D) float16.

    Audios are sorted by length inside each call so that padding stays small.
    """
    log_mel = log_mel_for(encoder.config)
    encoder.eval()

    @torch.inference_mode()
    def encode(audios: list[np.ndarray]) -> list[np.ndarray]:
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        feats, lengths = log_mel([audios[i] for i in order])
        hidden, out_lengths = encoder.encode(feats, lengths)  # N, T', D
        out: list[np.ndarray] = [np.empty(0)] * len(audios)
        for row, i in enumerate(order):
            out[i] = hidden[row, : int(out_lengths[row])].to(torch.float16).numpy()
        return out

    return encode
