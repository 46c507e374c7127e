"""Speech of the answer's text: the LLM's tokens are detokenized as they come, finished words are
gathered into phrases, and each phrase is phonemized by eSpeak NG and rendered by the Piper voice.

This is the text-to-speech cascade that issue 16 asked to measure beside our own speech decoders
(`speechllm speech eval`, path `text_tts`): with only this CPU to train on, it is the path Whisper
tiny.en understands best (README, Speech output), so the default speaks this way. It reads no LLM
state, so it works with any LLM; the decoder paths (`phonemes`, `kmeans`) stay as options.

When the first audio comes: a word is finished when the whitespace after it arrives (the token
that starts the next word), and a phrase is rendered as soon as its last word is finished: the
first after `voice.first_chunk_words` words, later ones at clause punctuation or after
`voice.chunk_words` words. Each word is phonemized alone and the phrase's words are joined by the
voice's space unit: in an exploratory run on the held-out answers this was heard better than
phonemizing the phrase as a whole, whose unstressed function words Whisper tiny.en missed more.

Streaming equals offline: the words are the answer's whitespace-separated words (made speakable by
`spoken_words`, which reads only a word and the one before it), the phrases are cut from that word
sequence alone, and `synthesize_text(text)` cuts and renders the whole text the same way, so a
stream's audio equals it for any split of the answer into tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from torch import Tensor

from speechllm.config import SAMPLE_RATE
from speechllm.inference.detok import IncrementalDecoder
from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.phonemes import PUNCTUATION, SPACE
from speechllm.speech_out.piper_voice import PiperVoice
from speechllm.speech_out.spoken_words import spoken_word, spoken_words

_CLOSERS = "\"')]}\u201d\u2019"
"""Closing quotes and brackets after a clause's punctuation (`"Paris."`): still a clause end."""
_LAST_SPACE = re.compile(r"\s(?=\S*$)")


def ends_clause(word: str) -> bool:
    """True when a word ends with clause punctuation (, . ? ! : ;), closing quotes aside."""
    return word.rstrip(_CLOSERS)[-1:] in tuple(PUNCTUATION)


class PhraseWords:
    """Words in, closed phrases out: the same cuts however the words arrive."""

    def __init__(self, first_chunk_words: int, chunk_words: int) -> None:
        self.first_words, self.chunk_words = first_chunk_words, chunk_words
        self.current: list[str] = []
        self.phrases = 0

    def push(self, word: str) -> list[str]:
        """The phrase this word closes ([] when it closes none)."""
        self.current.append(word)
        limit = self.first_words if self.phrases == 0 else self.chunk_words
        if len(self.current) < limit and not ends_clause(word):
            return []
        return self.finish()

    def finish(self) -> list[str]:
        """The open phrase (possibly empty)."""
        phrase, self.current = self.current, []
        self.phrases += bool(phrase)
        return phrase


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
        # eSpeak NG loads its data and onnxruntime plans its first run on the first call: paid here, at
        # load, rather than before the first answer's first audio.
        self.render(["Hello."])

    @classmethod
    def load(cls, config: VoiceConfig, decode: Callable[[list[int]], str]) -> TextSpeechOutput:
        return cls(PiperVoice(config), decode)

    def eval(self) -> TextSpeechOutput:
        return self

    def phrases(self) -> PhraseWords:
        return PhraseWords(self.voice.config.first_chunk_words, self.voice.config.chunk_words)

    def word_units(self, word: str) -> list[int]:
        """One speakable word's phoneme units, with clause punctuation only where the word ends with it
        (eSpeak NG ends `3.14` with "." and `1,000` with "," when it reads them alone)."""
        units = self.voice.inventory.encode(word)
        if not ends_clause(word):
            while units and self.voice.phoneme_of.get(units[-1], "") in PUNCTUATION:
                units.pop()
        return units

    def render(self, phrase: list[str]) -> np.ndarray:
        """One phrase (speakable words) -> its audio at 16 kHz: its words' units joined by the space unit."""
        units: list[int] = []
        for word in phrase:
            ids = self.word_units(word)
            units += [self.space, *ids] if units and ids else ids
        return self.voice.render(units) if units else np.zeros(0, dtype=np.float32)

    def synthesize_text(self, text: str) -> np.ndarray:
        """Offline speech of a whole answer, float32 at 16 kHz: the same phrases as a stream."""
        phrases, cut = [], self.phrases()
        for word in spoken_words(text):
            phrases.append(cut.push(word))
        phrases.append(cut.finish())
        parts = [self.render(p) for p in phrases if p]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def stream(self) -> TextSpeechStream:
        return TextSpeechStream(self)


class TextSpeechStream:
    """One answer: `push(hidden, token)` returns the audio of the phrase that token finished (the
    state is not read); `finish` the rest."""

    def __init__(self, speech: TextSpeechOutput) -> None:
        self.speech = speech
        self.text = IncrementalDecoder(speech.decode)
        self.phrases = speech.phrases()
        self.pending = ""  # text after the last whitespace: a word that may go on
        self.previous = ""  # the last finished word, as written
        self.finished = False

    def push(self, hidden: Tensor | None, token: int) -> np.ndarray:
        if self.finished:
            raise ValueError("push after finish: this speech stream is closed")
        self.pending += self.text.push(token)
        space = _LAST_SPACE.search(self.pending)
        if space is None:
            return np.zeros(0, dtype=np.float32)
        words, self.pending = self.pending[: space.start()], self.pending[space.end() :]
        return self._speak(words.split())

    def finish(self) -> np.ndarray:
        if self.finished:
            return np.zeros(0, dtype=np.float32)
        self.finished = True
        last = self._speak((self.pending + self.text.flush()).split())
        rest = self.phrases.finish()
        return np.concatenate([last, self.speech.render(rest) if rest else np.zeros(0, dtype=np.float32)])

    def _speak(self, words: list[str]) -> np.ndarray:
        parts = []
        for word in words:
            said = spoken_word(word, self.previous)
            self.previous = word
            phrase = self.phrases.push(said) if said else []
            if phrase:
                parts.append(self.speech.render(phrase))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
