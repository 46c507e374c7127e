"""Spoken answers on the OpenAI wire: the `modalities` and `audio` request fields, and audio out.

As with OpenAI's audio models, a chat completion speaks when asked with `modalities: ["text",
"audio"]` and `audio: {"voice": "default", "format": "wav" | "pcm16"}`:

- not streamed: `message.content` is null and `message.audio` is `{id, data, expires_at,
  transcript}`, `data` the base64 of the whole answer as a WAV file or as raw pcm16;
- streamed (pcm16 only, as OpenAI requires): the text comes as `delta.audio.transcript` pieces
  (not `delta.content`), the sound as `delta.audio.data` pieces (base64 pcm16, each a whole number
  of samples, so they can be decoded and played one by one), and a last `delta.audio` holds the
  `expires_at`.

pcm16 is 16-bit little-endian mono at 24 kHz, the rate OpenAI clients assume: the speech output's
16 kHz is resampled with soxr (streamed: one resampler per answer, so pieces join without seams;
its last few samples come with the final `delta.audio`). WAV stays at 16 kHz and states its rate.
Until `expires_at`, a later request may cite an answer as `{"role": "assistant", "audio": {"id":
...}}`, as OpenAI's multi-turn audio conversations do: `Transcripts` keeps the text for that.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf

from speechllm.data.audio import resample
from speechllm.serve.errors import ApiError

VOICES = ("default",)
FORMATS = ("wav", "pcm16")
MODALITIES = ("text", "audio")
PCM16_RATE = 24000
"""Sample rate of pcm16 audio, streamed or not (OpenAI's)."""
MAX_TRANSCRIPTS = 4096
"""Answers whose audio id can be cited at once; the oldest is forgotten first."""


@dataclass(frozen=True)
class AudioOutput:
    """What a request asked its spoken answer to be."""

    voice: str
    format: str
    """"wav" (a whole file; not streamed) or "pcm16" (raw 16-bit little-endian samples)."""


def parse_audio_output(data: dict[str, Any], *, stream: bool, available: bool) -> AudioOutput | None:
    """The spoken-answer request of a chat body; None when only text is asked for. 400 on mistakes,
    and when audio is asked of a server that has no speech output (`available` False)."""
    modalities = data.get("modalities")
    if modalities is None:
        return None
    if (
        not isinstance(modalities, list)
        or not modalities
        or not all(isinstance(m, str) and m in MODALITIES for m in modalities)
    ):
        raise ApiError(
            400, f"'modalities' must be a non-empty list of {list(MODALITIES)}, got {modalities!r}", param="modalities"
        )
    if "audio" not in modalities:
        return None
    if not available:
        raise ApiError(
            400,
            "this server has no speech output and answers in text only; ask for modalities ['text']",
            param="modalities",
            code="audio_output_unavailable",
        )
    spec = data.get("audio")
    if not isinstance(spec, dict):
        raise ApiError(
            400,
            "'audio' must be an object {'voice': 'default', 'format': 'wav' or 'pcm16'} when 'modalities' "
            f"includes 'audio', got {type(spec).__name__ if spec is not None else 'nothing'}",
            param="audio",
        )
    voice, fmt = spec.get("voice"), spec.get("format")
    if voice not in VOICES:
        raise ApiError(400, f"audio.voice must be one of {list(VOICES)}, got {voice!r}", param="audio.voice")
    if fmt not in FORMATS:
        raise ApiError(400, f"audio.format must be one of {list(FORMATS)}, got {fmt!r}", param="audio.format")
    if stream and fmt != "pcm16":
        raise ApiError(
            400,
            f"streamed audio is only sent as 'pcm16' (as OpenAI does), got audio.format {fmt!r}",
            param="audio.format",
        )
    return AudioOutput(voice, fmt)


def pcm16(samples: np.ndarray) -> bytes:
    """float audio (N,) in [-1, 1] (clipped) -> 16-bit little-endian PCM bytes (2N)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """float audio (N,) -> a 16-bit mono WAV file."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> str:
    """The base64 `data` of `samples` in the requested format (pcm16: resampled to PCM16_RATE)."""
    raw = wav(samples, sample_rate) if fmt == "wav" else pcm16(resample(samples, sample_rate, PCM16_RATE))
    return base64.b64encode(raw).decode("ascii")


def audio_id() -> str:
    return f"audio_{uuid.uuid4().hex[:24]}"


class Transcripts:
    """The text of recent spoken answers by audio id, until they expire (bounded, oldest out first).

    Only touched from the server's event loop, so it needs no lock.
    """

    def __init__(self, ttl_seconds: float, capacity: int = MAX_TRANSCRIPTS) -> None:
        self.ttl = ttl_seconds
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def remember(self, aid: str, transcript: str) -> int:
        """Keep `transcript` under `aid`; returns its expiry as a unix time (the `expires_at`)."""
        expires = time.time() + self.ttl
        self._items[aid] = (transcript, expires)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return int(expires)

    def get(self, aid: str) -> str | None:
        item = self._items.get(aid)
        if item is None or item[1] < time.time():
            self._items.pop(aid, None)
            return None
        return item[0]


class AudioDeltas:
    """The `delta` objects of one streamed spoken answer, in OpenAI's layout: the audio id rides on
    the first transcript piece and on the first data piece, and the last piece holds `expires_at`.

    `remember(aid, transcript) -> expires_at` keeps the whole transcript for later turns (Transcripts).
    """

    def __init__(self, aid: str, sample_rate: int, remember: Callable[[str, str], int]) -> None:
        import soxr

        self.id = aid
        self.sample_rate = sample_rate
        self.remember = remember
        self._sent: set[str] = set()
        self._resampler = soxr.ResampleStream(sample_rate, PCM16_RATE, 1, dtype="float32", quality="HQ")

    def first(self) -> dict[str, Any]:
        return {"role": "assistant", "refusal": None}

    def transcript(self, text: str) -> dict[str, Any]:
        return self._delta("transcript", text)

    def data(self, samples: np.ndarray) -> dict[str, Any]:
        """Speech-output samples -> a `data` delta of pcm16 at PCM16_RATE (the resampler keeps a few back)."""
        out = self._resampler.resample_chunk(np.asarray(samples, dtype=np.float32))
        return self._delta("data", base64.b64encode(pcm16(out)).decode("ascii"))

    def end(self, transcript: str) -> dict[str, Any]:
        """The last audio delta, once the whole `transcript` is known; it carries the resampler's last samples."""
        audio: dict[str, Any] = {"id": self.id, "expires_at": self.remember(self.id, transcript)}
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if len(tail):
            audio["data"] = base64.b64encode(pcm16(tail)).decode("ascii")
        return {"audio": audio}

    def _delta(self, key: str, value: str) -> dict[str, Any]:
        audio = {key: value} if key in self._sent else {"id": self.id, key: value}
        self._sent.add(key)
        return {"audio": audio}


def message_audio(
    aid: str, samples: np.ndarray, sample_rate: int, fmt: str, transcript: str, expires_at: int
) -> dict[str, Any]:
    """`choices[0].message.audio` of a non-streamed spoken answer."""
    return {"id": aid, "data": encode(samples, sample_rate, fmt), "expires_at": expires_at, "transcript": transcript}
