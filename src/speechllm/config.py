"""Typed configuration for every part of a speech LLM.

Plain dataclasses, YAML in and out, no torch import: a config can be read, checked and printed
without loading a model. Every field is documented where it is declared; `__post_init__` rejects
values that cannot work and says what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from speechllm.atomic import atomic_write

T = TypeVar("T")

SAMPLE_RATE = 16_000
"""Hz of every waveform the model reads and writes (Whisper's rate); the one definition."""
COMPRESSORS = ("stack", "pool", "ctc")
ADAPTORS = ("linear", "mlp", "swiglu")
CTC_MODES = ("blank_removal", "frame_average")
PARTS = ("encoder", "layer_weights", "compressor", "adaptor", "llm", "lora", "recognizer")
BRIDGE_MODES = ("continuous", "posterior", "top1")
RECOGNIZERS = ("ctc", "whisper")
PRECISIONS = ("auto", "float32", "bfloat16")
LOGITS = ("exact", "screened", "auto")
RECOGNIZER_ENGINES = ("torch", "ctranslate2")
CT2_COMPUTE_TYPES = ("int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_recognizer_threads(threads: int | str | None) -> None:
    """`bridge.threads`: a positive count, `auto` or None; ValueError naming the value otherwise."""
    if isinstance(threads, str):
        if threads != "auto":
            raise ValueError(f"bridge.threads must be a count, 'auto' or null, got {threads!r}")
    elif threads is not None:
        _check_positive("bridge.threads", threads)


def _check_positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass
class EncoderConfig:
    """The Whisper speech encoder."""

    source: str = "bundled:whisper-tiny.en"
    """Where the weights live: `bundled:whisper-tiny.en`, `bundled:whisper-base`, a CTranslate2
    Whisper directory (model.bin + config.json), a Hugging Face Whisper directory, or `random`
    (architecture from the fields below; for tests and from-scratch runs)."""
    padding: Literal["real", "30s", "tail"] = "real"
    """`real`: encode the audio at its real length (fast on CPU); `30s`: pad each 30 s window as
    Whisper was trained; `tail`: encode the real length and 1 s of silence after it, and complete the
    window's 1500 positions with the states of an encoded silent window (computed once), so Whisper's
    own decoder reads a whole window for ~1/4 of the encoder's time (a 3 s question, README Figures).
    Outputs are trimmed to the audio's real length in every mode (`forward(trim=True)`)."""
    layer: int | Literal["weighted"] = -1
    """Which hidden state feeds the compressor: -1 the last (after the final layer norm), i >= 0
    the output of layer i (0 is the embeddings), or `weighted` for a learned softmax-weighted sum
    of all of them."""
    n_mels: int = 80
    d_model: int = 384
    n_layers: int = 4
    n_heads: int = 6
    ffn_dim: int = 1536
    max_positions: int = 1500
    """Architecture; filled from the checkpoint when one is loaded, used as is for `random`."""
    precision: str = "float32"
    """Precision the encoder's layers compute in: `float32`, `bfloat16` (under autocast: matmuls and
    attention in bfloat16, norms and softmax as autocast keeps them; the convolutions and the
    output stay float32), or `auto` (bfloat16 where the hardware multiplies it natively)."""

    def __post_init__(self) -> None:
        _check_choice("encoder.padding", self.padding, ("real", "30s", "tail"))
        _check_choice("encoder.precision", self.precision, PRECISIONS)
        if self.layer != "weighted" and not isinstance(self.layer, int):
            raise ValueError(f"encoder.layer must be an int or 'weighted', got {self.layer!r}")
        if isinstance(self.layer, int) and self.layer < -1:
            raise ValueError(f"encoder.layer must be >= -1, got {self.layer}")
        # Checkpoints set n_layers when they load; a random encoder's depth is known now.
        if self.source == "random" and isinstance(self.layer, int) and self.layer > self.n_layers:
            raise ValueError(f"encoder.layer must be in [-1, {self.n_layers}], got {self.layer}")
        for name in ("n_mels", "d_model", "n_layers", "n_heads", "ffn_dim", "max_positions"):
            _check_positive(f"encoder.{name}", getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"encoder.d_model ({self.d_model}) must divide by n_heads ({self.n_heads})")


@dataclass
class CompressorConfig:
    """Shortens the encoder's frame sequence before the adaptor."""

    kind: str = "stack"
    """`stack` (concatenate every k frames, LLaMA-Omni), `pool` (average every k frames) or `ctc`
    (Speech-LLaMA's CTC compressor)."""
    k: int = 4
    """Frames per output position for `stack` and `pool`."""
    ctc_mode: str = "blank_removal"
    """For `ctc`: `blank_removal` drops frames whose best label is blank; `frame_average` also
    averages each run of consecutive frames that share one non-blank label."""
    ctc_vocab_size: int = 0
    """For `ctc`: number of CTC labels including blank (0: the LLM's vocabulary + 1, so label i is
    LLM token i and the extra last label is blank)."""
    ctc_blank_id: int = -1
    """For `ctc`: the blank label; -1 means the last one."""

    def __post_init__(self) -> None:
        _check_choice("compressor.kind", self.kind, COMPRESSORS)
        _check_choice("compressor.ctc_mode", self.ctc_mode, CTC_MODES)
        _check_positive("compressor.k", self.k)
        if self.ctc_blank_id < -1:
            raise ValueError(f"compressor.ctc_blank_id must be >= -1 (-1: the last label), got {self.ctc_blank_id}")
        if self.ctc_vocab_size < 0:
            raise ValueError(f"compressor.ctc_vocab_size must be >= 0, got {self.ctc_vocab_size}")


@dataclass
class AdaptorConfig:
    """Projects compressed speech frames into the LLM's embedding space."""

    kind: str = "mlp"
    """`linear`, `mlp` (Linear-ReLU-Linear, LLaMA-Omni) or `swiglu` (RMSNorm then a SwiGLU MLP)."""
    hidden_dim: int = 2048
    """Width of the hidden layer of `mlp` and `swiglu`."""
    output_scale: float = 1.0
    """Multiplies the adaptor's output; a lever to start near the LLM's embedding norms."""
    select: str = "none"
    """After the adaptor: `none` keeps every position; `blank_removal` / `frame_average` label each
    output against the LLM's embedding table plus a learned blank row and keep only non-blank
    positions (averaging runs of one label): Speech-LLaMA's CTC compression, done in the LLM's own
    embedding space. The blank row is trained by the `ctc_embed` stage."""

    def __post_init__(self) -> None:
        _check_choice("adaptor.kind", self.kind, ADAPTORS)
        _check_choice("adaptor.select", self.select, ("none", *CTC_MODES))
        _check_positive("adaptor.hidden_dim", self.hidden_dim)


@dataclass
class BridgeConfig:
    """How speech reaches the LLM: adaptor outputs, or the LLM's own token embeddings (a token bridge)."""

    mode: str = "continuous"
    """`continuous`: the adaptor's outputs (after `adaptor.select`); `posterior`: at each step of a CTC
    path, the posterior-weighted sum of the LLM's input embeddings; `top1`: exactly the embedding
    rows of the recognizer's best path (LegoSLM, arXiv 2505.11352). See `speechllm.model.bridge`."""
    recognizer: str = "ctc"
    """Where the path comes from in `posterior` / `top1`: `ctc`, the adaptor's CTC head over the
    LLM's vocabulary + blank (trained by the `ctc_embed` stage, no LLM forward pass); or `whisper`,
    the encoder checkpoint's own pretrained text decoder (greedy; `top1` only; needs
    `encoder.padding: 30s` or `tail`, the window Whisper's decoder was trained on)."""
    blank_threshold: float = 0.95
    """CTC frames whose blank posterior is above this are dropped before merging."""
    temperature: float = 1.0
    """Softmax temperature of each step's renormalised (blank-free) distribution in `posterior`."""
    max_tokens: int = 128
    """Longest transcript the `whisper` recognizer writes for one 30 s window."""
    beam_size: int = 1
    """Beam width of the `whisper` recognizer (1: greedy; 5: as Whisper's own decoding by default)."""
    engine: str = "torch"
    """What runs the `whisper` recognizer's text decoder: `torch`, our PyTorch decoder (`precision` and
    `logits` apply; it keeps a `tail` window's silent keys); or `ctranslate2`, the checkpoint's own
    decoder in CTranslate2 (`compute_type`), reading the same encoder states. See
    `speechllm.model.ct2_decoder`."""
    compute_type: str = "int8"
    """CTranslate2's compute type for the `ctranslate2` engine: `int8` (weights int8; its beam search
    ~3x faster than the PyTorch decoder's on this CPU), `int8_float32`, `int8_bfloat16`, `int16`,
    `float32`, `bfloat16`."""
    threads: int | str | None = "auto"
    """CPU threads of the `ctranslate2` engine: a count, None (as many as torch uses), or `auto`: one
    or torch's count, whichever runs a short probe beam search sooner when the model loads (~1 s;
    `ct2_decoder.probe_seconds`). Which is faster depends on the CPU: on session 17's two cores a
    question's beam search took 0.20 s on two threads against 0.11 s on one; on session 22's
    (AVX2 only) two threads brought the first token from 0.81-0.87 to 0.69-0.75 x the cascade's
    (README, Figures). The count changes no transcript."""
    precision: str = "float32"
    """Precision of the `whisper` recognizer's text decoder weights and matmuls: `float32`,
    `bfloat16`, or `auto` (bfloat16 where the hardware multiplies it natively: CUDA, or a CPU with
    AMX / AVX512-BF16). bfloat16 gives the first token ~0.14 s sooner on such a CPU, at a small cost
    (held-out people WER 0.228 vs 0.218, agreement 56.9% vs 58.5%: README, Figures), so float32 is
    the default; see `speechllm.model.precision`. The encoder's precision is `encoder.precision`."""
    logits: str = "exact"
    """How a float32 recognizer computes each step's logits against its 51,864-row token table:
    `exact`; `screened`, all of them against a bfloat16 copy of the table and each row's best 64
    again exactly in float32 (the tokens a beam can take keep their float32 logits; the table is
    read at every step, and in bfloat16 half as much: the beam search runs ~30% faster on a CPU
    with AMX, benchmarks/screened_logits.py); `auto`: screened where bfloat16 multiplies natively.
    See `WhisperTextDecoder.screen_logits`."""
    rescore: float = 0.0
    """With beam search (`beam_size` > 1), weight of the LLM's own log-likelihood of each finished
    hypothesis as the user's turn, added to the recognizer's log-probability to pick the transcript
    (N-best rescoring, `speechllm.model.rescore`); 0: Whisper's own ranking."""
    candidates: int = 3
    """How many of the recognizer's best distinct hypotheses the LLM scores when rescoring (the cost
    of rescoring grows with it). On the development set (benchmarks/rescore_weight.py `--candidates 1
    2 3 4 5`, weight 0.7), tiny.en's best 2 / 3 / 5 give 54 / 55 / 54 of 120 exact transcripts (WER
    0.116 / 0.125 / 0.131): 3 keeps the most exact ones, which is what agreement needs."""
    word_bonus: float = 0.0
    """When rescoring, added to a hypothesis' score per word (a word insertion bonus,
    `model.rescore.best_by_llm`): both log-probabilities fall with every token, so without it a
    hypothesis that drops a word ("Which is the capital of Austria?") gains from the drop. 0 (off):
    the best setting on the development sets (benchmarks/rescore_weight.py `--bonuses`, weight 0.3,
    bonus 1: 89 of the recipe's 200 questions letter-perfect against the default's 88) did not carry
    over to the held-out sets (docs/default-model.md, session 25)."""
    merge_with: str | None = None
    """A second Whisper checkpoint (as `encoder.source`: `bundled:whisper-base`, a CTranslate2 or
    Hugging Face Whisper directory) whose own encoder and text decoder (as pretrained, run by
    `engine`) also hear each audio; the best `candidates` hypotheses of each recognizer are pooled
    and the LLM rescores the pool (`model.merge`: weight `rescore`, floor `merge_floor`). Each audio is
    heard twice, so the first token comes later. Needs beam search and rescoring. None: one recognizer.
    With `bundled:whisper-base` and `rescore` 0.5 (chosen on development questions), the held-out WER
    falls on every set and agreement rises (67.7% -> 71.5%), and the first token comes at 1.30-1.48x
    the cascade's instead of 0.66x (README, Figures -> The default model, session 25)."""
    merge_floor: float = 4.0
    """With `merge_with`: a recognizer's log-probability of a pooled text it did not finish is its
    worst finished hypothesis' minus this."""
    confidence: float | None = None
    """With beam search (`beam_size` > 1), decode greedily first and keep a greedy transcript whose
    mean log-probability per token (its end of text included) is at least this: no beam, no
    rescoring (`Transcriber.transcribe`). None: always the beam. The threshold trades the first
    token's time (a confident question skips the beam and the rescoring pass) against hearing:
    benchmarks/confidence_gate.py measures both on development sets."""
    tidy: bool = True
    """Write the `whisper` recognizer's transcript as a person types it before the LLM reads it: each
    sentence starts with a capital, and one that opens like a question ends with "?" (Whisper
    often writes a spoken question as "which city is the capital of austria."). Words are unchanged."""
    adapter: str | None = None
    """Low-rank adapters (LoRA) for the `whisper` recognizer's text decoder, merged into its weights
    at load (either engine): a safetensors file, relative to the checkpoint's directory or absolute
    (`speechllm.weights.decoder_adapter`; trained by `recipes/recognizer_adapter.py`). None: the
    checkpoint's decoder as pretrained."""

    @property
    def reads_whisper(self) -> bool:
        """Whether the LLM reads the path of the encoder checkpoint's own text decoder."""
        return self.mode != "continuous" and self.recognizer == "whisper"

    def __post_init__(self) -> None:
        _check_choice("bridge.mode", self.mode, BRIDGE_MODES)
        _check_choice("bridge.recognizer", self.recognizer, RECOGNIZERS)
        if not 0.0 < self.blank_threshold <= 1.0:
            raise ValueError(f"bridge.blank_threshold must be in (0, 1], got {self.blank_threshold}")
        _check_positive("bridge.temperature", self.temperature)
        _check_positive("bridge.max_tokens", self.max_tokens)
        _check_positive("bridge.beam_size", self.beam_size)
        _check_choice("bridge.engine", self.engine, RECOGNIZER_ENGINES)
        _check_choice("bridge.compute_type", self.compute_type, CT2_COMPUTE_TYPES)
        check_recognizer_threads(self.threads)
        _check_choice("bridge.precision", self.precision, PRECISIONS)
        _check_choice("bridge.logits", self.logits, LOGITS)
        if self.rescore < 0:
            raise ValueError(f"bridge.rescore must be >= 0, got {self.rescore}")
        _check_positive("bridge.candidates", self.candidates)
        if self.word_bonus < 0:
            raise ValueError(f"bridge.word_bonus must be >= 0, got {self.word_bonus}")
        if self.merge_floor < 0:
            raise ValueError(f"bridge.merge_floor must be >= 0, got {self.merge_floor}")
        if self.merge_with is not None and not (
            self.reads_whisper and self.beam_size > 1 and self.rescore > 0 and self.confidence is None
        ):
            raise ValueError(
                "bridge.merge_with needs the whisper recognizer (mode top1), beam search (beam_size > 1), "
                "rescoring (rescore > 0) and no confidence gate"
            )
        if self.confidence is not None and self.confidence > 0:
            raise ValueError(f"bridge.confidence is a mean log-probability: <= 0 or null, got {self.confidence}")
        if self.recognizer == "whisper" and self.mode == "posterior":
            raise ValueError(
                "bridge.mode 'posterior' needs bridge.recognizer 'ctc' (the whisper recognizer gives top1 only)"
            )


@dataclass
class LLMConfig:
    """The decoder-only LLM."""

    source: str = "bundled:smollm2-135m-instruct"
    """`bundled:smollm2-135m-instruct`, a Hugging Face model directory, or a `.gguf` file
    (dequantized by transformers, converted once and cached)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self) -> None:
        _check_choice("llm.dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class LoraConfig:
    """LoRA on the LLM's attention projections (via peft)."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        _check_positive("lora.r", self.r)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


@dataclass
class SpeechLLMConfig:
    """A whole speech LLM: encoder -> compressor -> adaptor -> LLM."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    adaptor: AdaptorConfig = field(default_factory=AdaptorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    prefix_attention: Literal["causal", "bidirectional"] = "causal"
    """Attention over the prompt (text + speech) before the answer: `causal` as the LLM was
    trained, or `bidirectional` (Speech-LLaMA's non-causal prefix); the answer is always causal."""
    speech_token: str = "<speech>"
    """Placeholder added to the tokenizer; each occurrence in a prompt stands for one audio."""
    trainable: list[str] = field(default_factory=lambda: ["layer_weights", "compressor", "adaptor"])
    """Parts whose weights train (and are saved): any of encoder, layer_weights, compressor,
    adaptor, llm, lora. Everything else is frozen and reloaded from its source."""
    system_prompt: str | None = None
    """Replaces the chat template's default system prompt when set."""
    lora_on_text: bool = False
    """Use LoRA for prompts without any speech too; False answers text exactly as the plain LLM does."""

    def __post_init__(self) -> None:
        _check_choice("prefix_attention", self.prefix_attention, ("causal", "bidirectional"))
        for part in self.trainable:
            _check_choice("trainable part", part, PARTS)
        if "lora" in self.trainable and not self.lora.enabled:
            raise ValueError("trainable lists 'lora' but lora.enabled is false")
        if not self.speech_token:
            raise ValueError("speech_token must be a non-empty string")
        bridge = self.bridge
        if bridge.mode != "continuous" and bridge.recognizer == "ctc" and self.adaptor.select == "none":
            raise ValueError(
                f"bridge.mode {bridge.mode!r} with the ctc recognizer needs the adaptor's CTC head: "
                "set adaptor.select to blank_removal or frame_average (got 'none')"
            )
        if bridge.reads_whisper and self.encoder.padding == "real":
            raise ValueError(
                "bridge.recognizer 'whisper' reads Whisper's 30 s window: set encoder.padding to '30s' "
                f"or 'tail' (got {self.encoder.padding!r})"
            )
        if "recognizer" in self.trainable:
            raise ValueError("the recognizer is a frozen pretrained part; remove 'recognizer' from trainable")


# ----------------------------------------------------------------------------- YAML in and out


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain nested dicts and lists."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any] | None, default: Any = None) -> Any:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and wrong scalar types by name.

    Keys left out keep `default`'s values when it is given (an instance of `cls`), else the field's
    own default; a nested section keeps the values of its field's default (so a partial `loop:`
    section of a trainer keeps that trainer's loop defaults). A field without any default must be given.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for {cls.__name__}; expected some of {sorted(fields)}")
    if default is None:
        missing = sorted(n for n, f in fields.items() if n not in data and _field_default(f) is _NO_DEFAULT)
        if missing:
            raise ValueError(f"{cls.__name__} needs {missing}: they have no default")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{cls.__name__}.{name} must be a mapping, got {value!r}")
            base = getattr(default, name) if default is not None else _field_default(fields[name])
            value = from_dict(hint, value, None if base is _NO_DEFAULT else base)
        else:
            _check_type(f"{cls.__name__}.{name}", hint, value)
        kwargs[name] = value
    return cls(**kwargs) if default is None else dataclasses.replace(default, **kwargs)


_NO_DEFAULT = object()


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name` (a fresh one from its factory); raises if it has none."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ValueError(f"{cls.__name__} has no field {name!r}; expected one of {sorted(fields)}")
    value = _field_default(fields[name])
    if value is _NO_DEFAULT:
        raise ValueError(f"{cls.__name__}.{name} has no default")
    return value


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


_SCALARS = (int, float, bool, str)


def _check_type(name: str, hint: Any, value: Any) -> None:
    """Reject a YAML value of the wrong scalar type (bool is not an int here; an int is a fine float).

    Checked: scalars, optional scalars (None allowed) and lists of scalars; other hints (Literal,
    tuples, unions of several kinds) are left to `__post_init__`.
    """
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return
    kinds = [a for a in allowed if a is not type(None)]
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is list:
        (item,) = typing.get_args(kinds[0]) or (Any,)
        if item not in _SCALARS:
            return
        if not isinstance(value, list) or not all(_is_a(item, v) for v in value):
            raise ValueError(f"{name} must be a list of {item.__name__}, got {type(value).__name__} {value!r}")
        return
    if not kinds or not all(a in _SCALARS for a in kinds):
        return
    if not any(_is_a(a, value) for a in kinds):
        expected = " or ".join(a.__name__ for a in kinds)
        raise ValueError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")


def _is_a(kind: type, value: Any) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def flag_overrides(flags: dict[str, Any]) -> list[str]:
    """`key.path=value` overrides for the command-line flags that were given (None: not given),
    each value written as JSON (which YAML reads back as it was): paths become strings."""

    def plain(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return [f"{key}={json.dumps(plain(value))}" for key, value in flags.items() if value is not None]


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        out[key] = _merge(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return out


def load_yaml(
    cls: type[T], path: str | Path | None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> T:
    """The one config loader: dataclass `cls` from a YAML file (None: all defaults) plus
    `key.path=value` overrides, with unknown keys and wrong types rejected by name.

    `base` (nested dicts) lies under the YAML: defaults the caller derives, e.g. a trainer's
    warm-up from the steps asked for on the command line, that the file may still set.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = _merge(base or {}, data)
    apply_overrides(data, overrides or [])
    return typing.cast(T, from_dict(cls, data))


def load_config(path: str | Path, overrides: list[str] | None = None) -> SpeechLLMConfig:
    """Read a SpeechLLMConfig from YAML, with optional `key.path=value` overrides."""
    return load_yaml(SpeechLLMConfig, path, overrides)


def save_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML that `load_yaml` reads back, atomically (tuples as lists)."""
    plain = json.loads(json.dumps(to_dict(config)))  # tuples -> lists, which yaml.safe_dump can write
    with atomic_write(path) as f:
        f.write(yaml.safe_dump(plain, sort_keys=False))
