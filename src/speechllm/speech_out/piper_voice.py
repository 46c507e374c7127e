"""A pretrained Piper voice as the vocoder of phoneme units, rendering phrase by phrase.

Piper's VITS model (text encoder, duration predictor, flow and generator in one ONNX graph, run
with onnxruntime) turns a sentence of phoneme ids into 22.05 kHz audio; it needs the whole chunk,
so a stream cuts the decoder's phonemes at word ends:
the first chunk after `first_chunk_words` words (the latency knob), later ones at clause
punctuation or after `chunk_words` words. Each chunk is rendered alone (BOS ... EOS), its edge
silence trimmed to `margin_s`, a pause added after a clause or sentence end, and resampled with
soxr to 16 kHz; the chunks are simply concatenated.

Streaming equals offline: `synthesize(units)` cuts the same chunks (the rule reads only the unit
sequence, not when units arrived) and renders each the same way, so a stream's audio equals it
exactly when the voice is deterministic (`noise_scale = noise_w = 0`, the default; with Piper's
own noise every call draws new noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechllm.config import SAMPLE_RATE
from speechllm.data.audio import resample
from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.phonemes import (
    BOS,
    EOS,
    PAD,
    PUNCTUATION,
    SENTENCE_END,
    SPACE,
    PhonemeInventory,
    default_voice_config,
)

SILENCE_THRESHOLD = 0.01
"""|sample| below this (of full scale) counts as the voice's edge silence."""


def voice_paths(model: str) -> tuple[Path, Path]:
    """(.onnx, .onnx.json) of a VoiceConfig.model."""
    if model == "joe":
        config = default_voice_config()
        return config.with_suffix(""), config
    onnx = Path(model)
    config = onnx.with_name(onnx.name + ".json")
    if not onnx.is_file() or not config.is_file():
        raise FileNotFoundError(f"voice.model must be 'joe' or a Piper .onnx with its .onnx.json beside, got {model}")
    return onnx, config


class PhraseChunker:
    """Phoneme units in, closed chunks out: the same cuts however the units are split into pushes."""

    def __init__(self, inventory: PhonemeInventory, first_chunk_words: int, chunk_words: int) -> None:
        self.first_words, self.chunk_words = first_chunk_words, chunk_words
        self.phoneme_of = inventory.phoneme_of
        self.current: list[int] = []
        self.words = 0
        self.chunks = 0

    def push(self, units: Sequence[int]) -> list[list[int]]:
        closed = []
        for unit in units:
            phoneme = self.phoneme_of.get(int(unit), "")
            boundary = phoneme == SPACE or (phoneme != "" and phoneme in PUNCTUATION)
            ends_word = boundary and bool(self.current) and not self._is_boundary(self.current[-1])
            self.current.append(int(unit))
            if ends_word:
                self.words += 1
            limit = self.first_words if self.chunks == 0 else self.chunk_words
            phrase_end = phoneme != "" and phoneme in PUNCTUATION and self.chunks > 0
            if ends_word and (self.words >= limit or phrase_end):
                closed.append(self._close())
        return closed

    def finish(self) -> list[int]:
        """The last chunk (possibly empty)."""
        return self._close() if self.current else []

    def _is_boundary(self, unit: int) -> bool:
        phoneme = self.phoneme_of.get(unit, "")
        return phoneme == SPACE or (phoneme != "" and phoneme in PUNCTUATION)

    def _close(self) -> list[int]:
        chunk, self.current, self.words = self.current, [], 0
        self.chunks += 1
        return chunk


class PiperVoice:
    """Phoneme units -> 16 kHz float32 audio with a Piper voice. `num_units` is the voice's id space."""

    sample_rate = SAMPLE_RATE

    def __init__(self, config: VoiceConfig | None = None) -> None:
        import onnxruntime

        self.config = config or VoiceConfig()
        onnx, voice_json = voice_paths(self.config.model)
        self.inventory = PhonemeInventory.from_voice_config(voice_json)
        import json

        self.phoneme_of = self.inventory.phoneme_of
        self.voice_rate = int(json.loads(voice_json.read_text(encoding="utf-8"))["audio"]["sample_rate"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

    @property
    def num_units(self) -> int:
        return self.inventory.num_symbols

    def eval(self) -> PiperVoice:  # the voice has no training mode; kept so callers treat both vocoders alike
        return self

    def chunker(self) -> PhraseChunker:
        return PhraseChunker(self.inventory, self.config.first_chunk_words, self.config.chunk_words)

    def render(self, units: Sequence[int]) -> np.ndarray:
        """One chunk of units -> its audio at 16 kHz: trimmed edges, plus a pause after a clause end."""
        # A decoder may predict an id the voice lacks, or its BOS/EOS/PAD: dropped, as Piper drops unknown phonemes.
        phonemes = [p for p in map(self.phoneme_of.get, units) if p is not None and p not in (BOS, EOS, PAD)]
        while phonemes and phonemes[0] == SPACE:
            phonemes = phonemes[1:]
        if not phonemes or all(p == SPACE or p in PUNCTUATION for p in phonemes):
            return np.zeros(0, dtype=np.float32)
        ids = self.inventory.voice_input(self.inventory.ids(phonemes))
        c = self.config
        audio = self.session.run(
            None,
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array([c.noise_scale, c.length_scale, c.noise_w], dtype=np.float32),
            },
        )[0].reshape(-1)  # 1, 1, 1, T -> T
        audio = resample(trim_silence(audio, self.voice_rate, c.margin_s), self.voice_rate, SAMPLE_RATE)
        last = next((p for p in reversed(phonemes) if p != SPACE), "")
        pause = c.pause_s * (2 if last in SENTENCE_END else 1) if last in PUNCTUATION else 0.0
        return np.concatenate([audio, np.zeros(round(pause * SAMPLE_RATE), dtype=np.float32)])

    def synthesize(self, units: Sequence[int]) -> np.ndarray:
        """A whole answer's units, cut and rendered exactly as a stream would."""
        chunker = self.chunker()
        chunks = [*chunker.push(units), chunker.finish()]
        parts = [self.render(c) for c in chunks if c]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def streaming(self) -> PhraseStream:
        return PhraseStream(self)


class PhraseStream:
    """One answer: `push(units)` returns the audio of the chunks those units closed; `flush` the rest."""

    def __init__(self, voice: PiperVoice) -> None:
        self.voice = voice
        self.chunker = voice.chunker()
        self.chunks: list[list[int]] = []
        """The chunks rendered so far, in order."""

    def push(self, units: Sequence[int]) -> np.ndarray:
        return self._render(self.chunker.push(units))

    def flush(self) -> np.ndarray:
        last = self.chunker.finish()
        return self._render([last] if last else [])

    def _render(self, chunks: list[list[int]]) -> np.ndarray:
        self.chunks += chunks
        parts = [self.voice.render(c) for c in chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def trim_silence(audio: np.ndarray, sample_rate: int, margin_s: float) -> np.ndarray:
    """Cut leading and trailing samples below SILENCE_THRESHOLD, keeping `margin_s` of them."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_THRESHOLD)
    if not len(loud):
        return np.zeros(0, dtype=np.float32)
    margin = round(margin_s * sample_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + 1 + margin].astype(np.float32, copy=False)
