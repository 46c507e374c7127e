"""Prompt reuse: the LLM's keys and values of the last prompt, so a prompt that starts the same way
(the chat template's system turn, the earlier turns of a conversation) is prefilled only from where
it differs (automatic prefix caching, as vLLM and llama.cpp's server do).

Prompts are compared as input embeddings (B=1, L, D), not token ids: a token bridge's speech
positions are the LLM's own embedding rows, so a transcript is reused like typed text. Only a
causal prompt alone in its group (no padding) is reused or stored: a padded row's positions and a
prefix-LM prompt's keys (which see later positions) would differ. The last position of a prompt is
computed, so its logits (and hidden state) come from a forward pass as without the cache, unless an
offered piece brings them.

Besides the last prompt, the cache takes one offered piece for the next lookup only: the chat
template through the user's turn and the assistant's header as N-best rescoring ran it
(`SpeechLLM.take_heard_turn`, `offer_heard_turn`), with the LLM's logits and hidden state after its
last position, so the prompt built on the transcript rescoring chose runs no position at all.
Whichever shares more positions with the prompt is used; equal embeddings position by position are
the test, so a piece that does not fit costs nothing but the comparison.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def filled_layers(cache: DynamicCache) -> list[tuple[DynamicLayer, Tensor, Tensor]]:
    """Each layer of a filled cache of full-attention layers with its keys and values (B, H, L, D);
    ValueError for any other layer."""
    out = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None or layer.values is None:
            raise ValueError(f"needs a filled cache of full-attention layers, got {type(layer).__name__}")
        out.append((layer, layer.keys, layer.values))
    return out


class Reused(NamedTuple):
    """What a lookup found: a fresh cache holding the keys of the prompt's first `positions`; and
    when those are the whole prompt, the logits (1, V) and hidden state (1, D, or None) after it."""

    cache: DynamicCache
    positions: int
    logits: Tensor | None = None
    hidden: Tensor | None = None


class PromptCache:
    """The keys and values of one stored prompt (at most `max_positions` long)."""

    def __init__(self, max_positions: int = 4096) -> None:
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {max_positions}")
        self.max_positions = max_positions
        self._embeds: Tensor | None = None  # L, D
        self._kv: list[tuple[Tensor, Tensor]] = []  # per layer: 1, H, L, D_head
        self._offered: _Piece | None = None  # next lookup only
        self.hits = 0  # positions reused so far (for benchmarks and tests)

    @staticmethod
    def usable(attention_mask: Tensor, full_mask: Tensor | None) -> bool:
        """Whether a prompt group can be reused or stored: one causal row without padding."""
        return full_mask is None and attention_mask.shape[0] == 1 and bool(attention_mask.all())

    @staticmethod
    def _shared(held: Tensor | None, inputs_embeds: Tensor, whole: bool = False) -> int:
        """How many leading positions of a prompt (1, L, D) equal `held`'s (L', D), at most L - 1
        (`whole`: L, for a piece that brings the outputs after its last position)."""
        if held is None:
            return 0
        n = min(held.shape[0], inputs_embeds.shape[1] - (0 if whole else 1))
        if n <= 0:
            return 0
        same = (held[:n] == inputs_embeds[0, :n]).all(-1)  # n
        return n if bool(same.all()) else int((~same).long().argmax())

    def common(self, inputs_embeds: Tensor) -> int:
        """How many leading positions of a prompt (1, L, D) equal the stored one's, at most L - 1."""
        return self._shared(self._embeds, inputs_embeds)

    def offer(
        self,
        embeds: Tensor,
        kv: list[tuple[Tensor, Tensor]],
        logits: Tensor | None = None,
        hidden: Tensor | None = None,
    ) -> None:
        """A piece for the next lookup only: its input embeddings (L, D) and per layer its keys and
        values (1, H, L, D_head), computed as a lone causal prompt from position 0; optionally the
        LLM's logits (V,) and final hidden state (D,) after its last position, which let a prompt
        that is exactly the piece run no position."""
        if any(k.shape[2] != embeds.shape[0] or v.shape[2] != embeds.shape[0] for k, v in kv):
            raise ValueError(f"offered keys and values do not hold the {embeds.shape[0]} positions offered")
        fits = kv and embeds.shape[0] <= self.max_positions
        self._offered = _Piece(embeds.detach(), kv, logits, hidden) if fits else None

    def lookup(self, inputs_embeds: Tensor, want_hidden: bool = False) -> Reused:
        """The prompt's positions shared with the stored prompt or the offered piece, whichever shares
        more (`Reused`; an empty cache and 0 when nothing is shared). The whole prompt only from an
        offered piece that brings its outputs (and a hidden state when `want_hidden`). The offered
        piece is then dropped."""
        n, kv, piece = self.common(inputs_embeds), self._kv, None
        if self._offered is not None:
            offer = self._offered
            whole = offer.logits is not None and (offer.hidden is not None or not want_hidden)
            shared = self._shared(offer.embeds, inputs_embeds, whole=whole)
            if shared > n:
                n, kv, piece = shared, offer.kv, offer
            self._offered = None
        if n == 0:
            return Reused(DynamicCache(), 0)
        self.hits += n
        cache = DynamicCache(ddp_cache_data=[(k[:, :, :n], v[:, :, :n]) for k, v in kv])
        if piece is None or n < inputs_embeds.shape[1]:
            return Reused(cache, n)
        assert piece.logits is not None
        hidden = piece.hidden[None] if want_hidden and piece.hidden is not None else None
        return Reused(cache, n, piece.logits[None], hidden)

    def store(self, inputs_embeds: Tensor, cache: DynamicCache) -> None:
        """Remember a prefilled prompt (1, L, D) and its cache (copied: the cache goes on growing)."""
        length = inputs_embeds.shape[1]
        try:
            layers = filled_layers(cache)
        except ValueError:
            layers = []
        if not layers or length > self.max_positions or any(k.shape[2] != length for _, k, _ in layers):
            self.clear()  # only full-attention layers holding exactly this prompt are stored
            return
        self._embeds = inputs_embeds[0].detach().clone()
        self._kv = [(k.clone(), v.clone()) for _, k, v in layers]

    def clear(self) -> None:
        self._embeds, self._kv, self._offered = None, [], None

    @property
    def stored(self) -> int:
        """Positions held now."""
        return 0 if self._embeds is None else self._embeds.shape[0]


class _Piece(NamedTuple):
    """An offered piece (`PromptCache.offer`)."""

    embeds: Tensor
    kv: list[tuple[Tensor, Tensor]]
    logits: Tensor | None
    hidden: Tensor | None
