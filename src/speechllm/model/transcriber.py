"""What the token bridge asks of a Whisper text decoder, whichever engine runs it: the `Transcriber`
interface (greedy and beam search over encoder states, transcripts as text, the confidence gate),
and `transcribe_windows`, which encodes an input's 30 s windows and transcribes each (again over
the whole window when a `tail` encoding's transcript loops). `model.whisper_decoder.WhisperTextDecoder`
runs a decoder in PyTorch, `model.ct2_decoder.CT2TextDecoder` in CTranslate2.
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import torch
from torch import Tensor

from speechllm.model.encoder import WhisperEncoder, split_windows

T = TypeVar("T")

COMPRESSION_LIMIT = 2.4
"""Whisper's own test for a decoder caught in a loop (`compression_ratio_threshold`, Radford et al.
2022): a transcript whose UTF-8 bytes zlib-compress by more than this."""


def repetitive(text: str) -> bool:
    """Whether a transcript compresses like a decoder repeating itself (`COMPRESSION_LIMIT`)."""
    data = text.encode()
    return bool(data) and len(data) / len(zlib.compress(data)) > COMPRESSION_LIMIT


Chooser = Callable[[list[tuple[str, float]]], str]
"""Picks a transcript from a beam's finished hypotheses: (text, summed log-probability) each."""


def mean_log_probability(ids: list[int], logp: float) -> float:
    """A finished hypothesis' summed log-probability per token, its end of text counted
    (`bridge.confidence` compares this)."""
    return logp / (len(ids) + 1)


def whisper_pick(finished: list[tuple[list[int], float]]) -> list[int]:
    """Whisper's own choice among finished hypotheses (tokens, summed log-probability): the best mean
    log-probability per token (no length penalty)."""
    return max(finished, key=lambda f: f[1] / max(len(f[0]), 1))[0]


class Transcriber(abc.ABC):
    """A Whisper text decoder as `transcribe_windows` and the token bridge use it: greedy or beam
    search over encoder states, transcripts as text. `WhisperTextDecoder` runs it in PyTorch,
    `model.ct2_decoder.CT2TextDecoder` in CTranslate2."""

    detokenize: Callable[[list[int]], str] | None
    """Token ids -> text (the checkpoint's tokenizer); needed by `transcribe`."""

    @abc.abstractmethod
    def know_window(self, window: Tensor) -> None:
        """A window's states (S, D) that encoder positions will often equal (a `tail` encoding's
        silent part): a decoder may keep what it computes of them once."""

    @abc.abstractmethod
    def greedy(self, states: Tensor, lengths: Tensor | None = None, max_tokens: int = 128) -> list[list[int]]:
        """Greedy transcripts of encoder states (B, S, D): the text tokens of each, without specials."""

    @abc.abstractmethod
    def nbest(self, states: Tensor, beam_size: int = 5, max_tokens: int = 128) -> list[tuple[list[int], float]]:
        """The hypotheses a beam search finished for one sample's states (1, S, D): text tokens and
        summed log-probability (the end of text's included)."""

    def transcribe(
        self,
        states: Tensor,
        lengths: Tensor | None = None,
        max_tokens: int = 128,
        beam_size: int = 1,
        choose: Chooser | None = None,
        confidence: float | None = None,
    ) -> list[str]:
        """Transcripts of encoder states (B, S, D) as text, stripped: greedy, or by beam search.
        `choose` (beam search only): picks each sample's text from its finished hypotheses (text,
        summed log-probability), e.g. rescored by an LLM; None: Whisper's own ranking. `confidence`
        (beam search only): a sample's greedy transcript is kept, without a beam or `choose`, when
        its mean log-probability per token is at least this (`confident_greedy`)."""
        if self.detokenize is None:
            raise ValueError("this decoder was built without a tokenizer: pass detokenize= to transcribe")
        detokenize = self.detokenize
        if beam_size <= 1:
            return [detokenize(x).strip() for x in self.greedy(states, lengths, max_tokens)]
        n = [states.shape[1]] * states.shape[0] if lengths is None else lengths.tolist()
        texts = []
        for i in range(len(n)):
            sample = states[i : i + 1, : int(n[i])]  # 1, S_i, D
            kept = None if confidence is None else self.confident_greedy(sample, confidence, max_tokens)
            if kept is not None:
                texts.append(detokenize(kept).strip())
                continue
            hyps = self.nbest(sample, beam_size, max_tokens)
            if choose is not None:
                texts.append(choose([(detokenize(ids).strip(), logp) for ids, logp in hyps]))
            else:
                texts.append(detokenize(whisper_pick(hyps)).strip())
        return texts

    def confident_greedy(self, states: Tensor, confidence: float, max_tokens: int = 128) -> list[int] | None:
        """The greedy transcript of one sample's states (1, S, D) (a beam of one) if its mean
        log-probability per token, the end of text included, is at least `confidence`; else None."""
        mean, ids = max((mean_log_probability(ids, logp), ids) for ids, logp in self.nbest(states, 1, max_tokens))
        return ids if mean >= confidence else None


def encode_windows(encoder: WhisperEncoder, features: Tensor, lengths: Tensor) -> tuple[Tensor, list[int]]:
    """Encoder states (W, 1500, D_enc) of every 30 s window of log-mel features (N, n_mels, T), over
    all of each window's positions as Whisper's decoder reads them (`encoder.padding` `30s`: the
    features silence-padded to whole windows, as Whisper was trained; `tail`: each window's real
    frames and the silence after them, completed by a silent window's states); and the input each
    window came from (W,)."""
    if encoder.config.padding == "real":
        raise ValueError(
            "encode_windows reads whole windows: the encoder's padding must be '30s' or 'tail', got 'real'"
        )
    windows, window_lengths, owner = split_windows(features, lengths)  # W, n_mels, 3000
    states, _ = encoder(windows, window_lengths, trim=False)  # W, 1500, D_enc
    return states, owner


def decode_windows(
    encoder: WhisperEncoder,
    decoder: Transcriber,
    features: Tensor,
    lengths: Tensor,
    decode: Callable[[Tensor], list[T]],
    text: Callable[[T], str],
) -> tuple[list[T], list[int]]:
    """Each 30 s window of log-mel features (N, n_mels, T) encoded (`encode_windows`) and decoded
    (`decode`: encoder states (W, 1500, D_enc) -> one result per window), and the input each window
    came from. With the `tail` encoder, a window whose result's `text` loops (`repetitive`) is encoded
    again over its whole 30 s and decoded again: the shortened window is new to Whisper's decoder,
    the whole one is what it was trained on."""
    if encoder.config.padding == "tail":
        decoder.know_window(encoder.silence_states())  # the windows' silent part: its keys once
    states, owner = encode_windows(encoder, features, lengths)
    out = decode(states)
    again = [j for j, r in enumerate(out) if repetitive(text(r))] if encoder.config.padding == "tail" else []
    if again:
        windows, window_lengths, _ = split_windows(features, lengths)
        index = torch.tensor(again, device=windows.device)
        whole = encoder.whole_windows(windows[index], window_lengths[index])  # A, 1500, D_enc
        for j, r in zip(again, decode(whole)):
            out[j] = r
    return out, owner


def transcribe_windows(
    encoder: WhisperEncoder,
    decoder: Transcriber,
    features: Tensor,
    lengths: Tensor,
    max_tokens: int = 128,
    beam_size: int = 1,
    choose: Chooser | None = None,
    confidence: float | None = None,
) -> list[list[str]]:
    """The transcripts of each input's 30 s windows (`decode_windows`): per input, its windows'
    non-empty texts in order (`choose`, `confidence`: see `Transcriber.transcribe`)."""
    decode = partial(
        decoder.transcribe, max_tokens=max_tokens, beam_size=beam_size, choose=choose, confidence=confidence
    )
    texts, owner = decode_windows(encoder, decoder, features, lengths, decode, lambda text: text)
    grouped: list[list[str]] = [[] for _ in range(features.shape[0])]
    for i, text in zip(owner, texts):
        if text:
            grouped[i].append(text)
    return grouped
