"""Token ids to text as they come: never a broken character, never a stop string.

`IncrementalDecoder` turns one token at a time into text pieces; `StopMatcher` cuts that text at
the first stop string and holds back any tail that may still grow into one; `TextStream` chains
the two for one answer. The engine streams with it, and batch generation (`decode_stream`) ends
its answers with it, so both cut at a stop string the same way.
"""

from __future__ import annotations

from collections.abc import Callable


class IncrementalDecoder:
    """Token ids in, text out, never a broken character: bytes of an unfinished UTF-8 sequence (or
    a token whose text depends on the next) wait until the window decodes cleanly.

    Decodes a short window (the tokens of the previous delta plus the new ones) rather than the
    whole answer, so a step costs the same at token 500 as at token 5.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the window: the tokens already shown once, for context
        self._read = 0  # tokens before this index have been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        shown = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) <= len(shown) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(shown) :]

    @property
    def holding(self) -> bool:
        """Whether some pushed tokens have not been shown as text yet."""
        return self._read < len(self.ids)

    def flush(self) -> str:
        """Whatever is still held (e.g. an unfinished UTF-8 sequence at the very end), as decoded."""
        shown = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(shown) :]


class StopMatcher:
    """Cuts text at the first stop string, holding back any tail that may still grow into one."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        held = self._held + text
        hits = [i for i in (held.find(s) for s in self.stop) if i >= 0]
        if hits:
            self._held = ""
            return held[: min(hits)], True
        keep = max((k for s in self.stop for k in range(1, len(s)) if held.endswith(s[:k])), default=0)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    @property
    def holding(self) -> bool:
        """Whether text is held back as a possible start of a stop string."""
        return bool(self._held)


class TextStream:
    """One answer's text as its tokens come: pieces safe to show, cut at the first stop string."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]) -> None:
        self.decoder = IncrementalDecoder(decode)
        self.stops = StopMatcher(stop)
        self.stopped = False
        """A stop string was reached: the answer ends before it, nothing more is shown."""

    def push(self, token: int) -> str:
        """The text that `token` makes safe to show (often empty); sets `stopped` at a stop string."""
        piece, self.stopped = self.stops.feed(self.decoder.push(token))
        return piece

    def flush(self) -> str:
        """What was held back, at the end of the answer (nothing after a stop string)."""
        if self.stopped:
            return ""
        piece, self.stopped = self.stops.feed(self.decoder.flush())
        return piece if self.stopped else piece + self.stops.flush()

    @property
    def holding(self) -> bool:
        """Whether some pushed tokens' text has not been shown yet."""
        return self.decoder.holding or self.stops.holding

    @property
    def n_tokens(self) -> int:
        return len(self.decoder.ids)
