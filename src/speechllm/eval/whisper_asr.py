"""Whisper tiny.en's own decoder (faster-whisper, int8 on CPU) over the bundled weights.

The reference our figures compare against: the ASR baseline of the default model
(benchmarks/whisper_asr_baseline.py) and the judge of our generated speech (`speechllm speech eval`).
English, no timestamps, no VAD, no conditioning on earlier text.
"""

from __future__ import annotations

import numpy as np


class WhisperTranscriber:
    def __init__(self, beam_size: int = 1, source: str = "bundled:whisper-tiny.en") -> None:
        from faster_whisper import WhisperModel

        from speechllm.model.ct2_decoder import keeping_torch_threads
        from speechllm.weights.whisper import resolve_encoder_source

        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.beam_size = beam_size
        with keeping_torch_threads():  # faster-whisper's own thread count, torch's left as it was
            self.model = WhisperModel(str(resolve_encoder_source(source)), device="cpu", compute_type="int8")

    def __call__(self, audio: np.ndarray) -> str:
        """16 kHz mono float audio -> text ("" for empty audio)."""
        if len(audio) == 0:
            return ""
        segments, _ = self.model.transcribe(
            audio.astype(np.float32), language="en", beam_size=self.beam_size, without_timestamps=True,
            condition_on_previous_text=False, vad_filter=False,
        )  # fmt: skip
        return " ".join(s.text.strip() for s in segments)
