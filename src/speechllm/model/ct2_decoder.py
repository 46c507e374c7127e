"""Whisper's pretrained text decoder run by CTranslate2 over our encoder's states (`bridge.engine`).

The recognizer's beam search is the token bridge's largest cost before the LLM reads the question.
A tiny Whisper decoder step is a handful of skinny matrix products (5 beams x 384 wide) and one
against the 51,864-row token table: PyTorch's float32 and bfloat16 kernels run them far below the
CPU's speed, while CTranslate2 runs the same checkpoint's decoder in int8 with fused kernels: the
beam search of a held-out spoken question took 0.076 s instead of 0.232 s on this CPU (README,
Figures). It reads the states our PyTorch encoder computed (the 30 s window, or its `tail` encoding),
as `ctranslate2.models.Whisper.generate` accepts encoder outputs in place of features; only the
decoder runs in CTranslate2. It projects every encoder position's cross-attention keys at each
call (it cannot keep a silent window's, as `WhisperTextDecoder.know_window` does): ~16 ms of a 30 s
window on this CPU, included above.

Decoding as `WhisperTextDecoder` does: Whisper's prompt, the checkpoint's suppressed tokens (and no
special token but the end of text), a blank or end of text never first; beam search until
`beam_size` hypotheses finished, scores summed over tokens, the end of text's included.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechllm.config import CT2_COMPUTE_TYPES, check_recognizer_threads
from speechllm.model.transcriber import Transcriber

log = logging.getLogger(__name__)


@contextlib.contextmanager
def keeping_torch_threads() -> Iterator[None]:
    """Around loading a CTranslate2 model (faster-whisper's too): loading one sets the whole process's
    OpenMP threads, torch's included, to the model's count; torch gets its own back after it."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CT2TextDecoder(Transcriber):
    """A CTranslate2 Whisper model's text decoder over encoder states given as a tensor."""

    def __init__(
        self,
        whisper: Any,
        prompt: list[int],
        suppress: list[int],
        detokenize: Callable[[list[int]], str] | None = None,
        max_positions: int = 448,
        eot: int | None = None,
    ) -> None:
        self.whisper = whisper
        """A `ctranslate2.models.Whisper`."""
        self.prompt = list(prompt)
        """Tokens that start every transcript (<|startoftranscript|> ... <|notimestamps|>)."""
        self.suppress = list(suppress)
        """Never emitted: the checkpoint's suppressed tokens and every special token but the end of text."""
        self.detokenize = detokenize
        self.max_positions = max_positions
        self.eot = eot
        """The end of text's id (None: unknown; `probe_seconds` needs it)."""
        self.threads: int | None = None
        """The CPU threads it runs on, where `load_ct2_decoder` set them."""
        self.probe: dict[int, float] | None = None
        """With `bridge.threads: auto`, the probe's seconds per thread count that chose `threads`."""

    def know_window(self, window: Tensor) -> None:
        """Nothing to keep: CTranslate2 projects every encoder position at each call."""

    def _generate(self, states: Tensor, beam_size: int, max_tokens: int, logits: bool = False) -> list[Any]:
        if states.dim() != 3:
            raise ValueError(f"encoder states must be (batch, positions, width), got shape {tuple(states.shape)}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        import ctranslate2

        array = np.ascontiguousarray(states.detach().to(torch.float32).cpu().numpy())  # B, S, D: kept alive below
        view = ctranslate2.StorageView.from_array(array)
        return list(
            self.whisper.generate(
                view,
                [self.prompt] * states.shape[0],
                beam_size=beam_size,
                num_hypotheses=beam_size,
                length_penalty=0.0,  # scores summed over tokens, as WhisperTextDecoder's
                return_scores=True,
                # CTranslate2 decodes at most half of `max_length` tokens (openai Whisper's sample_len)
                max_length=2 * min(max_tokens, self.max_positions - len(self.prompt)),
                suppress_blank=True,
                suppress_tokens=self.suppress,
                return_logits_vocab=logits,
            )
        )

    def greedy(self, states: Tensor, lengths: Tensor | None = None, max_tokens: int = 128) -> list[list[int]]:
        """Greedy transcripts of encoder states (B, S, D): the text tokens of each. CTranslate2 reads
        every position of the window, so `lengths` must be None."""
        if lengths is not None:
            raise ValueError("CTranslate2's Whisper decoder reads every encoder position: lengths must be None")
        return [list(r.sequences_ids[0]) for r in self._generate(states, 1, max_tokens)]

    def token_log_probabilities(self, states: Tensor, max_tokens: int = 128) -> tuple[list[int], list[float]]:
        """The greedy transcript of one sample's states (1, S, D) and each of its tokens'
        log-probability, the end of text's last (their sum is the greedy hypothesis' score)."""
        if states.shape[0] != 1:
            raise ValueError(f"decodes one sample at a time, got states of shape {tuple(states.shape)}")
        if self.eot is None:
            raise ValueError("token_log_probabilities needs the end of text's id (a decoder from load_ct2_decoder)")
        result = self._generate(states, 1, max_tokens, logits=True)[0]
        ids = list(result.sequences_ids[0])
        steps = torch.tensor(np.stack([np.asarray(s).reshape(-1) for s in result.logits[0]]))  # T, V
        chosen = [*ids, self.eot][: steps.shape[0]]  # a transcript cut at max_tokens has no end of text
        logp = torch.log_softmax(steps.float(), -1)[torch.arange(len(chosen)), torch.tensor(chosen)]
        return ids, logp.tolist()

    def nbest(self, states: Tensor, beam_size: int = 5, max_tokens: int = 128) -> list[tuple[list[int], float]]:
        """The `beam_size` best hypotheses CTranslate2's beam search finished for one sample's states
        (1, S, D): text tokens and summed log-probability."""
        if states.shape[0] != 1:
            raise ValueError(f"beam_search decodes one sample at a time, got states of shape {tuple(states.shape)}")
        result = self._generate(states, beam_size, max_tokens)[0]
        return [(list(ids), float(score)) for ids, score in zip(result.sequences_ids, result.scores)]


def load_ct2_decoder(
    source: str, compute_type: str = "int8", threads: int | str | None = None, adapter: str | None = None
) -> CT2TextDecoder:
    """The text decoder of the CTranslate2 Whisper checkpoint `source` names (the bundled ones
    included), run by CTranslate2 in `compute_type` on `threads` CPU threads (None: torch's; `auto`:
    one or torch's count, whichever runs `probe_seconds`'s beam search sooner here), with
    the low-rank adapters of the file `adapter` merged into its weights (`bridge.adapter`: a patched
    copy of model.bin in memory)."""
    if compute_type not in CT2_COMPUTE_TYPES:
        raise ValueError(f"bridge.compute_type must be one of {CT2_COMPUTE_TYPES}, got {compute_type!r}")
    check_recognizer_threads(threads)
    try:
        import ctranslate2
    except ImportError as e:
        raise ImportError("bridge.engine 'ctranslate2' needs the ctranslate2 package: pip install ctranslate2") from e
    from speechllm.weights.whisper_decoder import read_ct2_whisper

    path, files, arch, tokenizer = read_ct2_whisper(source, whole=adapter is not None)
    if adapter is not None:
        from speechllm.weights.decoder_adapter import patch_ct2_model, read_adapter

        assert files is not None  # whole=True reads the files
        files["model.bin"] = patch_ct2_model(files["model.bin"], read_adapter(adapter))

    never = sorted({*arch["suppress"], *range(arch["specials_from"], arch["vocab_size"])} - {arch["eot"]})

    def decoder(count: int) -> CT2TextDecoder:
        with keeping_torch_threads():
            whisper = ctranslate2.models.Whisper(
                path, device="cpu", compute_type=compute_type, intra_threads=count, files=files
            )
        made = CT2TextDecoder(whisper, arch["prompt"], never, lambda ids: tokenizer.decode(ids), eot=arch["eot"])
        made.threads = count
        return made

    if not isinstance(threads, str):  # a count, or None: torch's
        return decoder(torch.get_num_threads() if threads is None else threads)
    decoders = {n: decoder(n) for n in sorted({1, torch.get_num_threads()})}
    if len(decoders) == 1:
        return decoders[1]
    seconds = probe_seconds(decoders)
    count = min(seconds, key=lambda n: seconds[n])
    log.info("bridge.threads auto: %s; the recognizer runs on %d", _timings(seconds), count)
    decoders[count].probe = seconds
    return decoders[count]


PROBE_POSITIONS = 200
"""Encoder positions of the probe (4 s of speech: a spoken question with `tail`'s margin)."""


def probe_seconds(decoders: dict[int, CT2TextDecoder], rounds: int = 2) -> dict[int, float]:
    """Each decoder's fastest of `rounds` probe beam searches (5 beams, 10 steps, the end of text
    never written), keyed as given; the decoders taken in turn after one warm-up each, so that a
    busy moment of the machine falls on all of them. The probe reads CTranslate2's encoding of 4 s
    of silence. The decoders share a checkpoint (only their threads differ)."""
    import ctranslate2

    first = next(iter(decoders.values()))
    if first.eot is None:
        raise ValueError("probe_seconds needs decoders that know their end of text (load_ct2_decoder's)")
    never = [*first.suppress, first.eot]
    silence = np.zeros((1, first.whisper.n_mels, 2 * PROBE_POSITIONS), dtype=np.float32)  # 1, mels, frames
    with keeping_torch_threads():
        states = first.whisper.encode(ctranslate2.StorageView.from_array(silence))  # 1, PROBE_POSITIONS, D

    def search(model: Any) -> float:
        start = time.perf_counter()
        model.generate(states, [first.prompt], beam_size=5, num_hypotheses=5,
                       max_length=2 * (10 + len(first.prompt)), suppress_tokens=never)  # fmt: skip
        return time.perf_counter() - start

    for d in decoders.values():
        search(d.whisper)  # warm-up
    best = {n: float("inf") for n in decoders}
    for _ in range(rounds):
        for n, d in decoders.items():
            best[n] = min(best[n], search(d.whisper))
    return best


def _timings(seconds: dict[int, float]) -> str:
    return ", ".join(f"{n} thread{'s' * (n > 1)} {s:.3f} s" for n, s in seconds.items())
