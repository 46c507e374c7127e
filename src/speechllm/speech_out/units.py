"""Discrete speech units: k-means over the frames of one Whisper encoder layer.

Why these features: the encoder is already in every speechllm model and on this machine (no
HuBERT is available offline) and its frames are 20 ms, the vocoder's hop. Why a late-middle
layer (3 of tiny.en's 4): it keeps what was said while dropping much of who said it, and the
speech decoder must predict units from text, which favours the more phonetic later layers. That
layer was chosen, not measured against the others: measuring needs the whole speech path
retrained per layer, more than this CPU budget allowed. Why K=100: our speech output is one TTS
voice and a few thousand utterances; 100 clusters over ~2*10^5 frames leave each unit ~2,000
examples for the vocoder, and a short unit vocabulary keeps CTC cheap. LLaMA-Omni clusters
HuBERT into 1,000 units for many speakers and hours of speech (Fang et al., 2024, section 3.3).

Nearest-centroid labels flicker: 45% of the runs of the default units in our training speech
are one frame (20 ms) long, which a decoder that predicts units from text cannot know.
`switch_penalty` trades distance for fewer changes (`smooth_labels`); at 32 it did not make the
end-to-end speech more intelligible (README, Speech output), so the default is 0.

A *frame-level* unit sequence has one id per encoder frame; `speechllm.model.ctc.run_lengths` drops consecutive repeats
and returns the run lengths (durations, in frames) that the vocoder's duration predictor learns.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from speechllm.config import EncoderConfig, from_dict, to_dict
from speechllm.data.manifest import Sample
from speechllm.model.encoder import WhisperEncoder
from speechllm.model.features import LogMel
from speechllm.speech_out.config import UnitsConfig

CONFIG_FILE = "units.json"
WEIGHTS_FILE = "centroids.safetensors"


def smooth_labels(costs: np.ndarray, switch_penalty: float) -> list[int]:
    """Frame costs (T, K) -> the labels (T,) minimising sum of costs + switch_penalty per change.

    Viterbi over K states where staying costs nothing and any switch costs the same, so each frame
    needs only the best previous state and the best switch: O(T K).
    """
    t_frames, k = costs.shape
    if t_frames == 0:
        return []
    best = costs[0].astype(np.float64)  # K: cost of the best path ending in each state
    came_from = np.empty((t_frames, k), dtype=np.int64)  # the state at t - 1 of that path
    states = np.arange(k)
    for t in range(1, t_frames):
        leader = int(best.argmin())
        switch = best[leader] + switch_penalty
        stay = best <= switch
        came_from[t] = np.where(stay, states, leader)
        best = np.where(stay, best, switch) + costs[t]
    path = np.empty(t_frames, dtype=np.int64)
    path[-1] = int(best.argmin())
    for t in range(t_frames - 1, 0, -1):
        path[t - 1] = came_from[t, path[t]]
    return path.tolist()


class UnitExtractor:
    """16 kHz audio -> frame-level unit ids (50 a second), by nearest k-means centroid.

    `encoder` must be built with `EncoderConfig(layer=config.layer)` so its output is that layer.
    """

    def __init__(self, config: UnitsConfig, encoder: WhisperEncoder, centroids: Tensor | None = None) -> None:
        if encoder.config.layer != config.layer:
            raise ValueError(f"encoder outputs layer {encoder.config.layer!r}, units need layer {config.layer}")
        if centroids is not None and tuple(centroids.shape) != (config.k, encoder.dim):
            raise ValueError(f"centroids must have shape {(config.k, encoder.dim)}, got {tuple(centroids.shape)}")
        self.config = config
        self.encoder = encoder.eval()
        self.centroids = centroids  # K, D
        self.log_mel = LogMel(encoder.config.n_mels)

    @classmethod
    def for_config(cls, config: UnitsConfig) -> UnitExtractor:
        """Load the encoder that `config` names (centroids still to be fitted or set)."""
        from speechllm.model.encoder import load_whisper_encoder

        return cls(config, load_whisper_encoder(EncoderConfig(source=config.encoder, layer=config.layer)))

    @torch.inference_mode()
    def features(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Encoder frames of each audio, (T_i, D) float32."""
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        feats, lengths = self.log_mel([audios[i] for i in order])
        hidden, out_lengths = self.encoder.encode(feats, lengths)  # N, T', D
        out: list[np.ndarray] = [np.empty(0)] * len(audios)
        for row, i in enumerate(order):
            out[i] = hidden[row, : int(out_lengths[row])].float().numpy()
        return out

    def fit(
        self, audios: Iterable[np.ndarray], *, max_frames: int = 200_000, progress: bool = True
    ) -> dict[str, float]:
        """Fit the centroids by mini-batch k-means on up to `max_frames` frames; returns fit statistics."""
        from sklearn.cluster import MiniBatchKMeans

        frames: list[np.ndarray] = []
        total = 0
        waves = iter(tqdm(audios, desc="units: encode", disable=not progress))
        # itertools.batched (Python 3.12) in 3.11: lists of 8 until the audio runs out.
        for batch in iter(lambda: list(itertools.islice(waves, 8)), []):
            for f in self.features(batch):
                frames.append(f)
                total += len(f)
            if total >= max_frames:
                break
        if total < self.config.k:
            raise ValueError(f"k-means with k={self.config.k} needs at least that many frames, got {total}")
        x = np.concatenate(frames)[:max_frames]
        km = MiniBatchKMeans(n_clusters=self.config.k, random_state=self.config.seed, batch_size=4096, n_init=3)
        km.fit(x)
        self.centroids = torch.from_numpy(km.cluster_centers_.astype(np.float32))
        counts = np.bincount(km.labels_, minlength=self.config.k)
        return {
            "frames": float(len(x)),
            "inertia_per_frame": float(km.inertia_ / len(x)),
            "empty": float((counts == 0).sum()),
        }

    def assign(self, frames: np.ndarray) -> list[int]:
        """(T, D) frames -> T unit ids: the nearest centroid, or with `switch_penalty` the Viterbi
        labels (see `smooth_labels`)."""
        if self.centroids is None:
            raise ValueError("the unit extractor has no centroids: fit() or load() it first")
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        distances = torch.cdist(x, self.centroids)  # T, K
        if not self.config.switch_penalty:
            return distances.argmin(-1).tolist()
        return smooth_labels(distances.square().double().numpy(), self.config.switch_penalty)

    def extract(self, audios: list[np.ndarray]) -> list[list[int]]:
        """Frame-level unit ids of each audio."""
        return [self.assign(f) for f in self.features(audios)]

    def save(self, directory: str | Path) -> None:
        if self.centroids is None:
            raise ValueError("nothing to save: the unit extractor has not been fitted")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"centroids": self.centroids.contiguous()}, str(d / WEIGHTS_FILE))
        (d / CONFIG_FILE).write_text(json.dumps(to_dict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, encoder: WhisperEncoder | None = None) -> UnitExtractor:
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{d} holds no unit extractor ({CONFIG_FILE} missing)")
        config = from_dict(UnitsConfig, json.loads((d / CONFIG_FILE).read_text()))
        extractor = cls(config, encoder) if encoder is not None else cls.for_config(config)
        extractor.centroids = load_file(str(d / WEIGHTS_FILE))["centroids"].float()
        return extractor


def extract_manifest(
    extractor: UnitExtractor,
    samples: Sequence[Sample],
    load: Callable[[str], np.ndarray],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[int]]:
    """Frame-level units of the first audio of each sample."""
    out: list[list[int]] = []
    for start in tqdm(range(0, len(samples), batch_size), desc="units: extract", disable=not progress):
        chunk = samples[start : start + batch_size]
        out += extractor.extract([load(s.audio[0]) for s in chunk])
    return out
