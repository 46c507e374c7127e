"""Speech output while the text is being written: LLM states -> units -> audio chunks.

`SpeechOutput` holds the speech decoder, the vocoder and the LLM's input embedding table (not
ours; read only). Three kinds of speech output (`units` in speech_output.yaml):
- "text": no decoder; the answer's text is phonemized word by word and a Piper voice renders it
  (speechllm.speech_out.text_speech, the default: the most intelligible on this CPU's budget);
- "phonemes": the decoder predicts a Piper voice's phoneme ids and the voice renders them phrase
  by phrase (speechllm.speech_out.piper_voice); the folder holds only the decoder;
- "kmeans": the decoder predicts k-means units of Whisper encoder frames and our unit vocoder
  (speechllm.speech_out.vocoder, folder `vocoder/`) renders them.
`stream()` gives a `SpeechStream`; the generation loop pushes every answer token with the hidden
state that predicted it (`stream_generate(on_hidden=...)`), the stream decodes that token's λ unit
positions incrementally and hands units to the vocoder's stream: k-means units in chunks (the
first after `first_chunk_units` units, then every `chunk_units`), phonemes at once (the voice's
stream cuts them at word ends). Neither part recomputes history, and the audio of a stream equals
`synthesize` on the whole answer for any chunking: the decoder is causal with bounded left
context, the unit vocoder holds back its overlap-add tail until the next frames arrive, and the
voice cuts the same chunks whenever the units arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from speechllm.config import SAMPLE_RATE, from_dict, save_config
from speechllm.speech_out.config import UNIT_KINDS, VoiceConfig
from speechllm.speech_out.decoder import SpeechDecoder
from speechllm.speech_out.vocoder import UnitVocoder

if TYPE_CHECKING:
    from collections.abc import Callable

    from speechllm.speech_out.piper_voice import PiperVoice
    from speechllm.speech_out.text_speech import TextSpeechOutput

CONFIG_FILE = "speech_output.yaml"


@dataclass
class StreamingConfig:
    """speech_output.yaml: which units, and how the stream hands them to the vocoder."""

    first_chunk_units: int = 10
    """k-means: units before the first audio chunk (~0.2-0.4 s of speech): the latency knob."""
    chunk_units: int = 20
    """k-means: units per later chunk: fewer, larger vocoder calls."""
    units: str = "kmeans"
    """"text" (the answer's text, spoken by the `voice`), "phonemes" (the decoder's phoneme ids, spoken
    by the `voice`) or "kmeans" (the decoder's k-means units, the folder's `vocoder/`)."""
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    """phonemes: the voice and its chunking."""

    def __post_init__(self) -> None:
        if self.units not in UNIT_KINDS:
            raise ValueError(f"units must be one of {list(UNIT_KINDS)}, got {self.units!r}")
        for name in ("first_chunk_units", "chunk_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"streaming.{name} must be >= 1, got {getattr(self, name)}")


class SpeechOutput(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        decoder: SpeechDecoder,
        vocoder: UnitVocoder | PiperVoice,
        embed_tokens: nn.Embedding | None,
        config: StreamingConfig | None = None,
    ) -> None:
        super().__init__()
        check_parts(decoder, vocoder)
        if decoder.config.token_embedding and embed_tokens is None:
            raise ValueError("the speech decoder reads token embeddings: pass the LLM's input embedding table")
        self.decoder = decoder.eval()
        self.vocoder = vocoder.eval()
        # A plain attribute, not a submodule: the table belongs to the LLM and is never saved here.
        self.__dict__["embed_tokens"] = embed_tokens
        self.config = config or StreamingConfig()
        kind = "kmeans" if isinstance(vocoder, UnitVocoder) else "phonemes"
        if self.config.units != kind:
            raise ValueError(f"speech_output config says units {self.config.units!r} but the vocoder reads {kind}")

    def units_per_push(self, first: bool) -> int:
        """Units the stream gathers before handing them to the vocoder's stream."""
        if self.config.units == "phonemes":
            return 1  # the voice's stream cuts at word ends itself
        return self.config.first_chunk_units if first else self.config.chunk_units

    def embed(self, tokens: Tensor) -> Tensor | None:
        """Token ids (N,) -> their LLM input embeddings (N, D_llm) in float32, or None if unused."""
        if not self.decoder.config.token_embedding:
            return None
        table: nn.Embedding = self.__dict__["embed_tokens"]
        with torch.no_grad():
            return table(tokens.to(table.weight.device)).float()

    def stream(self) -> SpeechStream:
        return SpeechStream(self)

    @torch.no_grad()
    def units(self, hidden: Tensor, tokens: Tensor) -> list[int]:
        """Offline units of one answer: hidden (N, D_llm) that predicted tokens (N,)."""
        return self.decoder.decode(hidden.float(), self.embed(tokens))

    @torch.no_grad()
    def synthesize(self, hidden: Tensor, tokens: Tensor) -> np.ndarray:
        """Offline speech of one answer, float32 at 16 kHz (empty when no unit was decoded)."""
        units = self.units(hidden, tokens)
        return self.vocoder.synthesize(units) if units else np.zeros(0, dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        vocoder = self.vocoder if isinstance(self.vocoder, UnitVocoder) else None
        save_parts(directory, self.decoder, vocoder, self.config)

    @classmethod
    def load(
        cls, directory: str | Path, embed_tokens: nn.Embedding | None, config: StreamingConfig | None = None
    ) -> SpeechOutput:
        """The decoder speech output in `directory` (`config`: its speech_output.yaml, if already read)."""
        d = Path(directory)
        config = config or read_streaming_config(d)
        if config.units == "text":
            raise ValueError(f"{d} speaks the answer's text and has no decoder: load it with load_speech_output")
        vocoder: UnitVocoder | PiperVoice
        if config.units == "phonemes":
            from speechllm.speech_out.piper_voice import PiperVoice

            vocoder = PiperVoice(config.voice)
        else:
            vocoder = UnitVocoder.load(d / "vocoder")
        return cls(SpeechDecoder.load(d / "decoder"), vocoder, embed_tokens, config)


class SpeechStream:
    """One answer's speech, pushed token by token. `push` and `finish` return float32 16 kHz audio
    that is final (possibly empty); all of it joined equals `SpeechOutput.synthesize`."""

    def __init__(self, speech: SpeechOutput) -> None:
        self.speech = speech
        self.decoder_state = speech.decoder.state()
        self.vocoder_stream = speech.vocoder.streaming()
        self.pending: list[int] = []
        self.units: list[int] = []
        self.samples = 0
        self.chunks = 0
        self.finished = False

    @torch.no_grad()
    def push(self, hidden: Tensor, token: int) -> np.ndarray:
        """hidden (D_llm,): the LLM state that predicted `token`."""
        if self.finished:
            raise ValueError("push after finish: this speech stream is closed")
        embed = self.speech.embed(torch.tensor([token]))
        new = self.decoder_state.push(hidden.float().reshape(-1), None if embed is None else embed[0])
        self.units += new
        self.pending += new
        if not self.pending or len(self.pending) < self.speech.units_per_push(first=self.chunks == 0):
            return np.zeros(0, dtype=np.float32)
        return self._vocode()

    def _vocode(self) -> np.ndarray:
        units, self.pending = self.pending, []
        self.chunks += 1
        audio = self.vocoder_stream.push(units)
        self.samples += len(audio)
        return audio

    def finish(self) -> np.ndarray:
        """The rest of the audio; the stream is closed afterwards."""
        if self.finished:
            return np.zeros(0, dtype=np.float32)
        self.finished = True
        parts = [self._vocode()] if self.pending else []
        if self.units:
            parts.append(self.vocoder_stream.flush())
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        self.samples += len(audio)
        return audio.astype(np.float32, copy=False)


def check_parts(decoder: SpeechDecoder, vocoder: UnitVocoder | PiperVoice) -> None:
    """ValueError unless the vocoder reads the units the decoder predicts."""
    if decoder.config.num_units != vocoder.num_units:
        raise ValueError(f"speech decoder predicts {decoder.config.num_units} units, vocoder reads {vocoder.num_units}")


def save_parts(
    directory: str | Path, decoder: SpeechDecoder, vocoder: UnitVocoder | None, config: StreamingConfig
) -> None:
    """A speech-output folder: decoder/, vocoder/ (k-means units only: a Piper voice comes from its
    package) and the streaming settings (no LLM weights)."""
    if (vocoder is None) != (config.units == "phonemes"):
        raise ValueError(f"units {config.units!r} need {'no' if config.units == 'phonemes' else 'a'} vocoder folder")
    d = Path(directory)
    decoder.save(d / "decoder")
    if vocoder is not None:
        check_parts(decoder, vocoder)
        vocoder.save(d / "vocoder")
    save_config(config, d / CONFIG_FILE)


def load_speech_output(
    directory: str | Path, llm: nn.Module, decode: Callable[[list[int]], str] | None = None
) -> SpeechOutput | TextSpeechOutput:
    """The speech output saved in `directory`, reading `llm`'s input embeddings; a `text` output
    speaks the answer's text and needs `decode` (LLM token ids -> text)."""
    config = read_streaming_config(Path(directory))
    if config.units == "text":
        from speechllm.speech_out.text_speech import TextSpeechOutput

        if decode is None:
            raise ValueError(f"{directory} speaks the answer's text: pass decode= (the LLM tokenizer's decode)")
        return TextSpeechOutput.load(config.voice, decode)
    get = getattr(llm, "get_input_embeddings", None)
    return SpeechOutput.load(directory, get() if get is not None else None, config)


def read_streaming_config(directory: Path) -> StreamingConfig:
    """A speech output folder's speech_output.yaml."""
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no speech output ({CONFIG_FILE} missing)")
    return from_dict(StreamingConfig, yaml.safe_load((directory / CONFIG_FILE).read_text()))
