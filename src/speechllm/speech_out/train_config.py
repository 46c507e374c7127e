"""Typed configs of the speech-output trainers and of `vocoder synth` (no torch).

Each trainer takes one of these (`train_decoder.train(cfg)`, `duration_train.train_durations(cfg)`,
`vocoder_train.main(cfg)`, `vocoder_train.synth(cfg)`); `speechllm.config.load_yaml` builds it from
an optional YAML file and `key.path=value` overrides, and the command line only turns its flags
into those overrides (speechllm.speech_out.cli). Paths are strings, as YAML gives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speechllm.config import _check_positive
from speechllm.speech_out.config import SpeechDecoderConfig, VocoderConfig
from speechllm.training.loop_config import LoopConfig

_DECODER = SpeechDecoderConfig()


def _speech_loop(out_dir: str, max_steps: int, lr: float, every: int, device: str = "auto") -> LoopConfig:
    """The schedule of the decoder and duration trainers: 100 warm-up steps, weight decay 0.01, held-out
    figures and a checkpoint every `every` steps."""
    return LoopConfig(
        out_dir=out_dir, max_steps=max_steps, lr=lr, warmup_steps=100, weight_decay=0.01, eval_every=every,
        save_every=every, device=device,
    )  # fmt: skip


@dataclass
class DecoderTrainConfig:
    """`speech train-decoder`: the CTC speech decoder on the frozen LLM's states over answers.

    Exactly one target kind: `answers` (phoneme units of the answers' text, no audio) or `units`
    (a units manifest of TTS recordings of the answers, k-means units)."""

    answers: list[str] = field(default_factory=list)
    """Answers JSONL files (id, question, answer): phoneme targets."""
    dev_answers: list[str] = field(default_factory=list)
    """Held-out answers JSONL files: phoneme error rate during training."""
    units: str | None = None
    """Units manifest of TTS answers (`speechllm units extract`): k-means targets."""
    dev_units: str | None = None
    """Held-out units manifest: unit error rate during training."""
    dev_size: int = 100
    """Held-out answers scored at each evaluation (the first ones)."""
    model: str | None = None
    """Speech LLM directory whose LLM states are read (None: the embedded default)."""
    questions: str | None = None
    """Questions JSONL giving the prompt of each answer (None: the shipped questions)."""
    num_units: int | None = None
    """Unit vocabulary K (None: the voice's phoneme count, or 1 + the largest unit of the data)."""
    upsample: int = _DECODER.upsample
    """Decoder positions per LLM token (see SpeechDecoderConfig)."""
    layers: int = _DECODER.layers
    dim: int = _DECODER.dim
    """Decoder width; its feed-forward is 4 * dim wide."""
    heads: int = _DECODER.heads
    window: int = _DECODER.window
    drop_over_upsample: bool = False
    """Leave out answers with more units per token than `upsample` (False: refuse to train on them)."""
    batch_size: int = 16
    threads: int = 1
    """torch CPU threads."""
    loop: LoopConfig = field(default_factory=lambda: _speech_loop("runs/speech/decoder", 2000, lr=1e-3, every=250))
    """The run directory (states caches, checkpoints, metrics and `model/`) and the schedule."""

    def __post_init__(self) -> None:
        if bool(self.units) == bool(self.answers):
            raise ValueError(
                "DecoderTrainConfig needs exactly one of units (a k-means units manifest) and answers (phoneme "
                f"targets), got units={self.units!r} and answers={self.answers!r}"
            )
        if self.dev_units and not self.units:
            raise ValueError(f"dev_units goes with units (k-means targets), got dev_units={self.dev_units!r}")
        if self.dev_answers and not self.answers:
            raise ValueError(f"dev_answers goes with answers (phoneme targets), got dev_answers={self.dev_answers!r}")
        for name in ("dev_size", "upsample", "layers", "dim", "heads", "window", "batch_size", "threads"):
            _check_positive(f"DecoderTrainConfig.{name}", getattr(self, name))
        if self.num_units is not None:
            _check_positive("DecoderTrainConfig.num_units", self.num_units)


@dataclass
class DurationTrainConfig:
    """`vocoder train-durations`: a new duration predictor for a trained vocoder, its generator kept."""

    model: str
    """A trained vocoder folder (its generator is kept)."""
    units: str
    """Units manifest to learn durations from."""
    dev_units: str | None = None
    """Held-out units manifest: L1, share of exact durations and speaking rate, before and after."""
    lookahead: int = 2
    """Units ahead each duration hears (VocoderConfig.duration_lookahead)."""
    layers: int = 2
    kernel: int = 3
    batch_size: int = 32
    loop: LoopConfig = field(
        default_factory=lambda: _speech_loop("runs/speech/durations", 3000, lr=2e-3, every=500, device="cpu")
    )
    """The run directory (the new vocoder goes to `<out_dir>/model`) and the schedule; `seed` seeds the predictor."""

    def __post_init__(self) -> None:
        if self.lookahead < 0:
            raise ValueError(f"DurationTrainConfig.lookahead must be >= 0, got {self.lookahead}")
        for name in ("layers", "kernel", "batch_size"):
            _check_positive(f"DurationTrainConfig.{name}", getattr(self, name))


@dataclass
class VocoderTrainConfig:
    """`vocoder train`: one vocoder training run."""

    units_manifest: str
    """The units manifest (JSONL: id, audio, frame-level units)."""
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            out_dir="runs/vocoder", max_steps=5000, lr=5e-4, warmup_steps=200, save_every=500, eval_every=0
        )
    )
    batch_size: int = 16
    """Segments per optimizer step."""
    segment_frames: int = 64
    """Frames (20 ms each) of each segment the loss is computed on: 1.28 s."""
    context_frames: int | None = None
    """Frames before each segment that feed the causal generator without a loss; None uses the
    generator's receptive field - 1, so every scored frame sees the context it has at inference."""
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    duration_weight: float = 1.0
    init_from: str = ""
    """A trained vocoder folder whose weights start this run (fine-tuning, e.g. on re-extracted
    units); parameters whose name and shape match are loaded, the others start fresh and are logged."""

    def __post_init__(self) -> None:
        if not self.units_manifest:
            raise ValueError("VocoderTrainConfig.units_manifest must name a JSONL units manifest, got ''")
        for name in ("batch_size", "segment_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_frames is not None and self.context_frames < 0:
            raise ValueError(f"context_frames must be >= 0 or None, got {self.context_frames}")
        for name in ("stft_weight", "mel_weight", "duration_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


DURATION_MODES = ("predict", "given")


@dataclass
class VocoderSynthConfig:
    """`vocoder synth`: units -> a 16 kHz WAV with a trained vocoder."""

    model: str
    """A vocoder folder (`<out_dir>/model` of a training run)."""
    out: str
    """The WAV to write."""
    units: list[int] | None = None
    """Unit ids to voice; exactly one of `units` and `units_file`."""
    units_file: str | None = None
    """A units manifest; voices the utterance `id` names (None: the first line)."""
    id: str | None = None
    durations: str | None = None
    """`predict`: merge repeats, durations from the predictor (the default for `units`); `given`:
    repeats are frames, keep their run lengths (the default for `units_file`)."""

    def __post_init__(self) -> None:
        if (self.units is None) == (self.units_file is None):
            raise ValueError(
                f"VocoderSynthConfig needs exactly one of units and units_file, got units={self.units!r} "
                f"and units_file={self.units_file!r}"
            )
        if self.units is not None and not self.units:
            raise ValueError("units must hold at least one unit id, got none")
        if self.durations is not None and self.durations not in DURATION_MODES:
            raise ValueError(f"durations must be one of {list(DURATION_MODES)} or None, got {self.durations!r}")
