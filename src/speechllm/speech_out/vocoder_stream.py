"""Streaming synthesis for the unit vocoder: `VocoderStream` voices one utterance as its units arrive,
and its audio equals `UnitVocoder.synthesize` of all of them.

Streams are built by `UnitVocoder.streaming()` (speechllm.speech_out.vocoder), as a Piper voice's
are by `PiperVoice.streaming()`, so `SpeechStream` (speechllm.speech_out.streaming) opens either
alike. Because the vocoder module imports this one, this one does not import it back (no import
cycle): it states what it runs of the vocoder as a Protocol, `StreamedVocoder`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from speechllm.speech_out.config import HOP_SAMPLES, VocoderConfig
from speechllm.speech_out.vocoder_parts import (
    Cache,
    DurationPredictor,
    FrameGenerator,
    OverlapAdd,
    UnitsLike,
    check_units,
)


class StreamedVocoder(Protocol):
    """What a stream reads of its `UnitVocoder`: the config, the three parts, its device, its durations check."""

    config: VocoderConfig
    duration_predictor: DurationPredictor
    generator: FrameGenerator
    ola: OverlapAdd

    @property
    def device(self) -> torch.device: ...

    def check_durations(self, durations: UnitsLike, n: int) -> Tensor: ...


class VocoderStream:
    """Incremental synthesis of one utterance; the concatenation of every `push` and the final `flush`
    equals `UnitVocoder.synthesize` of all the units (up to float rounding), however they are chunked.

    Chunk boundaries: every part is causal up to a fixed lookahead. A unit's duration depends on
    the units before it and `duration_lookahead` after it, so the last that many units of a push
    wait for the next push; audio frame t is the generator's output at frame t + lookahead, so the
    last `lookahead` frames of a push are voiced by the next push. At `flush` the last unit stands
    in for the missing future of both, as offline synthesis does. Each causal convolution keeps its last
    kernel - 1 input frames (units for the duration predictor) as history, the same values offline
    zero-padding and the earlier frames give, so state is a fixed size and a push costs the same at
    unit 2,000 as at unit 10. The overlap-add waits too: a sample is final once every frame whose
    window covers it has arrived, so a push returns audio up to d = (n_fft - hop) / 2 samples before
    the end of its last voiced frame and holds the n_fft - hop samples of unfinished tail (numerator
    and envelope) for the next push;
    `flush` normalises what the last frames left and cuts it at the utterance's end.
    """

    def __init__(self, vocoder: StreamedVocoder) -> None:
        self.vocoder = vocoder
        self.duration_cache: Cache | None = None
        self.generator_cache: Cache | None = None
        ola = vocoder.ola
        device = vocoder.device
        self.tail = torch.zeros(1, ola.overlap - 1, ola.hop, device=device)  # numerator of unfinished blocks
        self.tail_envelope = torch.zeros(1, ola.overlap - 1, ola.hop, device=device)
        self.to_skip = ola.delay  # stream samples before the output's first sample
        self.early_outputs = vocoder.config.lookahead  # generator frames before audio frame 0
        self.early_durations = vocoder.config.duration_lookahead  # predictor outputs before unit 0's
        self.waiting = torch.zeros(0, dtype=torch.long)  # units whose durations need later units
        self.given: bool | None = None  # whether pushes bring their own durations
        self.last_unit: Tensor | None = None
        self.frames = 0
        self.emitted = 0
        self.closed = False

    @torch.inference_mode()
    def push(self, units: UnitsLike, durations: UnitsLike | None = None) -> np.ndarray:
        """Append deduplicated units (N,) and optionally their durations (N,); returns the audio that
        is final now (float32, possibly empty)."""
        if self.closed:
            raise ValueError("push after flush: this stream is finished; start another with vocoder.streaming()")
        vocoder = self.vocoder
        ids = check_units(units, vocoder.config.num_units)
        if ids.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        given = durations is not None
        if self.given is not None and self.given != given:
            raise ValueError("durations must be given with every push of a stream or with none")
        self.given = given
        # The predictor runs even when durations are given: its history must hold every unit.
        predicted = self._predict(ids)
        if durations is not None:
            return self._voice(ids, vocoder.check_durations(durations, len(ids)))
        self.waiting = torch.cat([self.waiting, ids])
        ready, self.waiting = self.waiting[: len(predicted)], self.waiting[len(predicted) :]
        return self._voice(ready, predicted)

    @torch.inference_mode()
    def flush(self) -> np.ndarray:
        """End the utterance: the units still waiting for their durations, the last `lookahead`
        frames and the held-back tail, cut so the total is frames * HOP_SAMPLES samples."""
        if self.closed:
            raise ValueError("flush called twice: this stream is finished")
        self.closed = True
        waiting = np.zeros(0, dtype=np.float32)
        if len(self.waiting):  # their future is the last unit repeated, as offline
            lookahead = self.vocoder.config.duration_lookahead
            predicted = self._predict(self.waiting[-1:].expand(lookahead))
            waiting = self._voice(self.waiting, predicted)
        last = np.zeros(0, dtype=np.float32)
        if self.last_unit is not None and self.vocoder.config.lookahead:
            last = self._generate(self.last_unit.expand(self.vocoder.config.lookahead))
        remaining = self.frames * HOP_SAMPLES - self.emitted
        tail = self._emit(self.tail.reshape(-1), self.tail_envelope.reshape(-1), remaining)
        return np.concatenate([waiting, last, tail])

    def _predict(self, ids: Tensor) -> Tensor:
        """Units (N,) into the duration predictor -> frames (M,) of the M <= N earliest units whose
        lookahead is now complete (the first `duration_lookahead` outputs of a stream are no unit's)."""
        predictor = self.vocoder.duration_predictor
        log_durations, self.duration_cache = predictor(ids[None].to(self.vocoder.device), self.duration_cache)
        early = min(self.early_durations, ids.numel())
        self.early_durations -= early
        return predictor.durations(log_durations[0, early:]).cpu()

    def _voice(self, ids: Tensor, frames: Tensor) -> np.ndarray:
        """Units (N,) lasting frames (N,) through the generator; the audio that is final."""
        if ids.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        frame_units = torch.repeat_interleave(ids, frames).to(self.vocoder.device)  # N -> sum(frames)
        self.frames += frame_units.numel()
        self.last_unit = frame_units[-1:]
        return self._generate(frame_units)

    def _generate(self, frame_units: Tensor) -> np.ndarray:
        """Frame-level units (T,) through the generator and the overlap-add; the audio that is final."""
        ola = self.vocoder.ola
        spectrum, self.generator_cache = self.vocoder.generator(frame_units[None], self.generator_cache)
        early = min(self.early_outputs, spectrum.shape[1])
        self.early_outputs -= early
        spectrum = spectrum[:, early:]  # 1, T, bins -> 1, new, bins: outputs before audio frame 0 dropped
        new = spectrum.shape[1]
        if new == 0:
            return np.zeros(0, dtype=np.float32)
        numerator = ola.accumulate(ola.blocks(spectrum), self.tail)  # 1, new + R - 1, hop
        envelope = ola.accumulate(ola.envelope_blocks(new), self.tail_envelope)
        # Stream blocks before the first new frame's index + new are final: no later frame reaches them.
        self.tail, self.tail_envelope = numerator[:, new:], envelope[:, new:]
        return self._emit(numerator[:, :new].reshape(-1), envelope[:, :new].reshape(-1), None)

    def _emit(self, numerator: Tensor, envelope: Tensor, limit: int | None) -> np.ndarray:
        skip = min(self.to_skip, numerator.numel())
        self.to_skip -= skip
        numerator, envelope = numerator[skip:], envelope[skip:]
        if limit is not None:
            numerator, envelope = numerator[:limit], envelope[:limit]
        self.emitted += numerator.numel()
        return (numerator / envelope).float().cpu().numpy()

    def state_numel(self) -> int:
        """Numbers held between pushes (histories and tail): constant however long the stream runs."""
        held = [self.tail, self.tail_envelope, self.waiting]
        held += [*(self.duration_cache or []), *(self.generator_cache or [])]
        return sum(t.numel() for t in held)
