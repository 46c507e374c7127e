"""Training examples from a manifest: conversations with their audio as cached encoder frames.

With a feature cache the frozen encoder never runs during training: each audio part's frames are
read (memory-mapped) from the cache. Without one, the audio is loaded and the encoder runs on the
fly (slower; the encoder stays frozen either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechllm.data.audio import load_audio
from speechllm.data.feature_cache import FeatureCache, feature_key
from speechllm.data.manifest import Sample
from speechllm.data.transcripts import spoken_text, with_transcripts
from speechllm.model.speech_llm import SpeechLLM

__all__ = ["SpeechDataset", "spoken_text", "with_audio_keys", "with_transcripts"]


def with_audio_keys(sample: Sample) -> list[dict[str, Any]]:
    """The sample's messages with each audio part's index replaced by its feature-cache key."""
    out = []
    for m in sample.messages:
        content = m["content"]
        if isinstance(content, list):
            content = [
                {"type": "audio", "audio": feature_key(sample.id, p["audio"])} if p.get("type") == "audio" else p
                for p in content
            ]
        out.append({"role": m["role"], "content": content})
    return out


class SpeechDataset:
    """Samples of a manifest, each turned into (conversation, answer, frames, transcript) on demand."""

    def __init__(self, samples: Sequence[Sample], cache: FeatureCache | None, model: SpeechLLM | None = None) -> None:
        if not samples:
            raise ValueError("the training manifest has no samples")
        if cache is None and model is None:
            raise ValueError("SpeechDataset needs a feature cache or a model to encode audio with")
        self.samples = list(samples)
        self.cache = cache
        self.model = model
        if cache is not None:
            missing = [feature_key(s.id, i) for s in self.samples for i in range(len(s.audio))]
            missing = [k for k in missing if k not in cache]
            if missing:
                raise ValueError(
                    f"{len(missing)} audio clips are not in the feature cache (e.g. {missing[:3]}); "
                    "run `speechllm data encode` on this manifest first"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> list[int]:
        """Frames of each sample's audio (for length bucketing)."""
        if self.cache is None:
            return [int(s.meta.get("seconds", 1.0) * 50) for s in self.samples]
        return [sum(self.cache.get(feature_key(s.id, i)).shape[0] for i in range(len(s.audio))) for s in self.samples]

    def frames(self, sample: Sample) -> list[torch.Tensor]:
        """Encoder frames (T_i, D) of each audio of `sample`, in order."""
        if self.cache is not None:
            return [
                torch.from_numpy(np.asarray(self.cache.get(feature_key(sample.id, i)), dtype=np.float32))
                for i in range(len(sample.audio))
            ]
        assert self.model is not None
        feats, lengths = self.model.processor.log_mel([load_audio(p) for p in sample.audio])
        with torch.no_grad():
            hidden, out_lengths = self.model.encoder.encode(feats, lengths)
        return [hidden[i, : int(out_lengths[i])] for i in range(len(sample.audio))]

    def batch(self, indices: list[int]) -> dict[str, Any]:
        samples = [self.samples[i] for i in indices]
        return {
            "conversations": [with_audio_keys(s) for s in samples],
            "answers": [s.target for s in samples],
            "frames": [f for s in samples for f in self.frames(s)],
            "transcripts": [spoken_text(s) if s.audio else "" for s in samples],
            "text_conversations": [with_transcripts(s) for s in samples],
        }
