"""Two Whisper recognizers' hypotheses pooled for the LLM to rescore (`bridge.merge_with`).

Whisper tiny.en and Whisper base mishear different questions: on the held-out spoken questions each
beam holds the typed question where the other's does not for 6–10 of 130, and together they hold
it for 118 against tiny.en's 112 (benchmarks/nbest_oracle.py). Here each recognizer's encoder and
text decoder hear every 30 s window, each keeps its best `candidates` distinct hypotheses (tidied
as the LLM reads them), and the pool is scored as

    weight * LLM log-probability + mean over the recognizers of their log-probability

where a recognizer's log-probability of a text it did not finish is its worst finished
hypothesis' minus `floor` (N-best combination, as ROVER-like system combination does without a
shared lattice). weight 0.5 and floor 4 were chosen on the recipe's 200 development questions
(`benchmarks/nbest_oracle.py --set recipe --merge-weights ... --floors ...`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from speechllm.config import BridgeConfig
from speechllm.model.bridge import tidy_transcript
from speechllm.model.encoder import WhisperEncoder
from speechllm.model.rescore import HeardTurn, TurnScorer, candidates
from speechllm.model.transcriber import Transcriber, decode_windows

Hypotheses = list[tuple[str, float]]
"""A beam's finished hypotheses: text (tidied where `bridge.tidy`) and summed log-probability."""


@dataclass
class Hearing:
    """One recognizer: a Whisper encoder and the text decoder that reads its states."""

    encoder: WhisperEncoder
    recognizer: Transcriber


def window_hypotheses(
    hearing: Hearing, features: Tensor, lengths: Tensor, beam_size: int, max_tokens: int, tidy: bool
) -> tuple[list[Hypotheses], list[int]]:
    """Each 30 s window's finished hypotheses under `hearing` (`decode_windows`: features (N, n_mels,
    T); a `tail` window whose best hypothesis loops is heard again over its whole 30 s), and the
    input each window came from."""
    encoder, recognizer = hearing.encoder, hearing.recognizer
    if recognizer.detokenize is None:
        raise ValueError("merging needs recognizers built with a tokenizer (detokenize=)")
    detokenize = recognizer.detokenize

    def hear(states: Tensor) -> list[Hypotheses]:  # W, S, D_enc: each window's beam
        found = [recognizer.nbest(states[w : w + 1], beam_size, max_tokens) for w in range(states.shape[0])]
        texts = [[(detokenize(ids).strip(), lp) for ids, lp in window] for window in found]
        return [[(tidy_transcript(t) if tidy else t, lp) for t, lp in window] for window in texts]

    def best(hyps: Hypotheses) -> str:
        return max(hyps, key=lambda h: h[1])[0] if hyps else ""

    return decode_windows(encoder, recognizer, features, lengths, hear, best)


def pooled(first: Hypotheses, second: Hypotheses, n: int) -> list[str]:
    """The best `n` distinct texts of each recognizer, the first's first, each once."""
    return list(dict.fromkeys(t for hyps in (first, second) for t, _ in candidates(hyps, n)))


def recognizer_score(hypotheses: Hypotheses, text: str, floor: float) -> float:
    """A recognizer's log-probability of `text`: its best among the finished `hypotheses`, or the
    worst of them minus `floor` where it did not finish `text`."""
    if not hypotheses:
        raise ValueError("a recognizer finished no hypotheses")
    found = [lp for t, lp in hypotheses if t == text]
    return max(found) if found else min(lp for _, lp in hypotheses) - floor


def merged_pick(
    first: Hypotheses,
    second: Hypotheses,
    n: int,
    llm_scores: Callable[[list[str]], list[float]],
    weight: float,
    floor: float,
) -> tuple[str, list[str]]:
    """The pooled text with the best weight * LLM log-probability + the recognizers' mean score (see
    the module's doc), and the pool in the order `llm_scores` scored it (not called for a pool of one)."""
    pool = pooled(first, second, n)
    if not pool:
        raise ValueError("no hypotheses to choose from")
    if len(pool) == 1:
        return pool[0], pool
    lm = llm_scores(pool)
    if len(lm) != len(pool):
        raise ValueError(f"{len(pool)} pooled hypotheses but {len(lm)} LLM scores")
    scores = [
        weight * s + (recognizer_score(first, t, floor) + recognizer_score(second, t, floor)) / 2
        for t, s in zip(pool, lm)
    ]
    return pool[max(range(len(pool)), key=scores.__getitem__)], pool


def transcribe_merged(
    first: Hearing,
    second: Hearing,
    scorer: TurnScorer,
    features: Tensor,
    lengths: Tensor,
    bridge: BridgeConfig,
    silent: str,
) -> tuple[list[str], HeardTurn | None]:
    """What the LLM reads for each input of log-mel features (N, n_mels, T) when both recognizers
    hear it: per window `merged_pick` (weight `bridge.rescore`, floor `bridge.merge_floor`, the best
    `bridge.candidates` of each), the windows' texts joined; and the last window's chosen turn as
    the LLM ran it (None where its pool held one text, so no LLM pass ran). An empty hypothesis is
    scored as `silent`, as the LLM will read it."""
    args = (features, lengths, bridge.beam_size, bridge.max_tokens, bridge.tidy)
    (ours, owner), (theirs, _) = window_hypotheses(first, *args), window_hypotheses(second, *args)
    grouped: list[list[str]] = [[] for _ in range(features.shape[0])]
    turn = None
    for i, a, b in zip(owner, ours, theirs):
        text, pool = merged_pick(a, b, bridge.candidates, lambda ts: scorer([t or silent for t in ts]),
                                 bridge.rescore, bridge.merge_floor)  # fmt: skip
        turn = scorer.turn_state(pool.index(text)) if len(pool) > 1 else None
        if text:
            grouped[i].append(text)
    return [" ".join(texts) for texts in grouped], turn
