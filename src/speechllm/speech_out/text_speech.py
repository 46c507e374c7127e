"""Speech of the answer's text: the LLM's tokens are detokenized as they come, each finished word is
phonemized by eSpeak NG, and the Piper voice renders the phonemes phrase by phrase.

This is the text-to-speech cascade that issue 16 asked to measure beside our own speech decoders
(`speechllm speech eval`, path `text_tts`): with only this CPU to train on, it is the path Whisper
tiny.en understands best (README, Speech output), so the default speaks this way. It reads no LLM
state, so it works with any LLM; the decoder paths (`phonemes`, `kmeans`) stay as options.

Streaming equals offline: a word is phonemized once the whitespace after it arrives (the last one
at the end), words are joined by the voice's space phoneme, and the voice's `PhraseChunker` cuts
chunks from that unit sequence alone; `synthesize_text(text)` builds the same sequence from the
whole text, so a stream's audio equals it for any split of the answer into tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor

from speechllm.config import SAMPLE_RATE
from speechllm.inference.detok import IncrementalDecoder
from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.phonemes import SPACE
from speechllm.speech_out.piper_voice import PhraseStream, PiperVoice


class TextSpeechOutput:
    """What the engine needs of a speech output, speaking the answer's text with a Piper voice."""

    sample_rate = SAMPLE_RATE
    decoder = None
    """No speech decoder: LLM states are not read (the engine checks a decoder's width only when there is one)."""

    def __init__(self, voice: PiperVoice, decode: Callable[[list[int]], str]) -> None:
        self.voice = voice
        self.decode = decode
        """LLM token ids -> text (the LLM tokenizer's decode, special tokens skipped)."""
        self.space = voice.inventory.id_map[SPACE]

    @classmethod
    def load(cls, config: VoiceConfig, decode: Callable[[list[int]], str]) -> TextSpeechOutput:
        return cls(PiperVoice(config), decode)

    def eval(self) -> TextSpeechOutput:
        return self

    def word_units(self, words: str, *, leading_space: bool) -> list[int]:
        """Phoneme units of whitespace-separated words, each phonemized alone, joined by spaces."""
        units: list[int] = []
        for word in words.split():
            ids = self.voice.inventory.encode(word)
            if not ids:
                continue
            if units or leading_space:
                units.append(self.space)
            units += ids
        return units

    def synthesize_text(self, text: str) -> np.ndarray:
        """Offline speech of a whole answer, float32 at 16 kHz."""
        units = self.word_units(text, leading_space=False)
        return self.voice.synthesize(units) if units else np.zeros(0, dtype=np.float32)

    def stream(self) -> TextSpeechStream:
        return TextSpeechStream(self)


class TextSpeechStream:
    """One answer: `push(hidden, token)` returns the audio of the phrases that token closed (the
    state is not read); `finish` the rest."""

    def __init__(self, speech: TextSpeechOutput) -> None:
        self.speech = speech
        self.text = IncrementalDecoder(speech.decode)
        self.voice: PhraseStream = speech.voice.streaming()
        self.pending = ""  # text after the last finished word
        self.started = False  # whether a word has been handed to the voice
        self.finished = False

    def push(self, hidden: Tensor | None, token: int) -> np.ndarray:
        if self.finished:
            raise ValueError("push after finish: this speech stream is closed")
        self.pending += self.text.push(token)
        cut = max(self.pending.rfind(" "), self.pending.rfind("\n"), self.pending.rfind("\t"))
        if cut < 0:
            return np.zeros(0, dtype=np.float32)
        words, self.pending = self.pending[:cut], self.pending[cut + 1 :]
        return self._speak(words)

    def finish(self) -> np.ndarray:
        if self.finished:
            return np.zeros(0, dtype=np.float32)
        self.finished = True
        last = self._speak(self.pending + self.text.flush())
        audio = np.concatenate([last, self.voice.flush()])
        return audio.astype(np.float32, copy=False)

    def _speak(self, words: str) -> np.ndarray:
        units = self.speech.word_units(words, leading_space=self.started)
        self.started = self.started or bool(units)
        return self.voice.push(units) if units else np.zeros(0, dtype=np.float32)
