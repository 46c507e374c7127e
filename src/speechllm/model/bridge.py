"""The token bridge: speech reaches the LLM as the LLM's own input embeddings.

A recognizer gives, for each audio, a path over the LLM's vocabulary; the LLM then reads either
exactly the embedding rows of that path (`top1`) or, for a CTC recognizer, the posterior-weighted
sum of its embedding rows at each step (`posterior`) (LegoSLM, Ma et al. 2025, arXiv 2505.11352;
TASU, arXiv 2511.03310). Whatever the LLM reads is what it reads for text, so it follows spoken
instructions as it follows typed ones, with no training of the LLM or of a projection.

For a CTC head over the LLM's vocabulary plus a blank (the adaptor's `ctc_logits`):
  1. frames whose blank posterior is above `blank_threshold` are dropped;
  2. consecutive kept frames with the same best non-blank label merge into one step (their
     logits averaged), as CTC's collapse of repeats; a dropped frame between two equal labels
     keeps them apart, as a blank does;
  3. the blank column is removed and each step's distribution is renormalised with `temperature`;
  4. `posterior`: the step's embedding is that distribution times the embedding table;
     `top1`: the embedding row of its best label.
A sample with no kept frame keeps its least-blank frame, so every audio yields at least one step.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn


def ctc_steps(logits: Tensor, blank_threshold: float) -> tuple[Tensor, Tensor]:
    """Merge one sample's CTC frames (S, V+1; blank last) into steps: (S', V) merged logits without
    the blank column, and each step's best label (S',)."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"ctc_steps expects logits of shape (S>0, V+1), got {tuple(logits.shape)}")
    blank_prob = logits.softmax(-1)[:, -1]  # S
    keep = blank_prob <= blank_threshold
    if not bool(keep.any()):
        keep = torch.zeros_like(keep)
        keep[blank_prob.argmin()] = True
    token_logits = logits[:, :-1]  # S, V
    labels = token_logits.argmax(-1)  # S
    idx = keep.nonzero().flatten()  # S_kept
    # A new step starts at a kept frame whose label differs from the previous kept frame's, or
    # whose previous frame was dropped.
    prev_idx = torch.cat([idx.new_tensor([-2]), idx[:-1]])
    changed = torch.cat([labels.new_ones(1, dtype=torch.bool), labels[idx[1:]] != labels[idx[:-1]]])
    new_step = (idx != prev_idx + 1) | changed  # S_kept
    step_of = new_step.long().cumsum(0) - 1  # S_kept -> step index
    n_steps = int(step_of[-1]) + 1
    sums = torch.zeros(n_steps, token_logits.shape[1], dtype=logits.dtype, device=logits.device)
    sums.index_add_(0, step_of, token_logits[idx])
    counts = torch.bincount(step_of, minlength=n_steps).to(logits.dtype)
    return sums / counts[:, None], labels[idx][new_step]


def bridge_embeddings(
    step_logits: Tensor, step_labels: Tensor, table: Tensor, mode: str, temperature: float = 1.0
) -> Tensor:
    """Steps (S', V) / (S',) -> LLM input embeddings (S', D) for `mode` `posterior` or `top1`."""
    if mode == "top1":
        return table[step_labels]
    if mode == "posterior":
        return (step_logits / temperature).softmax(-1).to(table.dtype) @ table  # S', V @ V, D -> S', D
    raise ValueError(f"bridge mode must be posterior or top1 here, got {mode!r}")


def ctc_bridge(
    logits: Tensor, lengths: Tensor, table: Tensor, mode: str, blank_threshold: float, temperature: float = 1.0
) -> tuple[Tensor, Tensor, list[list[int]]]:
    """A batch of CTC logits (N, S, V+1) with lengths (N,) -> embeddings (N, S', D), lengths (N,),
    and each sample's label path (what `top1` feeds the LLM)."""
    seqs, paths = [], []
    for i, n in enumerate(lengths.tolist()):
        step_logits, labels = ctc_steps(logits[i, :n], blank_threshold)
        seqs.append(bridge_embeddings(step_logits, labels, table, mode, temperature))
        paths.append(labels.tolist())
    out_lengths = torch.tensor([s.shape[0] for s in seqs], device=logits.device)
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True), out_lengths, paths


def token_embeddings(paths: list[list[int]], table: Tensor) -> tuple[Tensor, Tensor]:
    """Token paths (each non-empty) -> their embedding rows, padded (N, S, D), and lengths (N,)."""
    empty = [i for i, p in enumerate(paths) if not p]
    if empty:
        raise ValueError(f"token paths must be non-empty; paths {empty[:5]} are empty")
    seqs = [table[torch.tensor(p, device=table.device)] for p in paths]
    lengths = torch.tensor([s.shape[0] for s in seqs], device=table.device)
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True), lengths


QUESTION_OPENERS = frozenset(
    ("what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "was", "were", "do",
     "does", "did", "can", "could", "will", "would", "should", "isn't", "aren't", "wasn't", "weren't", "don't",
     "doesn't", "didn't", "can't", "couldn't", "won't", "wouldn't", "shouldn't")
)  # fmt: skip
"""First words of a sentence that make it a question (English; the default recognizer is Whisper tiny.en)."""

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
"""A sentence ends at . ? or ! followed by a space (so "3.5" stays whole)."""


def tidy_transcript(text: str) -> str:
    """A transcript as a person types it: every sentence starts with a capital letter, and a sentence
    whose first word opens a question ends with "?" instead of "." (or nothing). Words are unchanged.

    "which city is the capital of austria." -> "Which city is the capital of austria?"
    """
    out = []
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence:
            continue
        sentence = sentence[0].upper() + sentence[1:]
        first = re.match(r"[\w']+", sentence)
        if first and first.group().lower() in QUESTION_OPENERS:
            body = sentence.rstrip(".")
            if body and body[-1] not in "?!":
                sentence = body + "?"
        out.append(sentence)
    return " ".join(out)
