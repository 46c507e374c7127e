"""Text metrics for evaluating speech LLMs: WER/CER, BLEU/chrF, QA accuracy and speech–text agreement.

Every corpus metric takes ``references`` first and ``hypotheses`` second, both lists of the same
non-zero length; anything else raises ``ValueError`` naming both lengths.

Normalisation follows Whisper: English text goes through transformers' ``EnglishTextNormalizer``
(lower-casing, punctuation removal, contraction expansion, spoken numbers to digits, filler words
"um"/"uh" dropped), other languages through ``BasicTextNormalizer``. The English normaliser also
takes a British-to-American spelling map; Hugging Face ships it as the Whisper tokenizer's
``normalizer.json``, which is not part of the transformers package, so by default we pass an empty
map ("colour" stays "colour"). Pass the map to :func:`make_normalizer` for numbers that match
published Whisper results exactly on British-spelled references.

Empty references, as a rule:

* WER/CER: a sample whose (normalised) reference is empty is kept; its hypothesis words count as
  insertions in the corpus totals, and its own rate is ``None`` (undefined). If the whole corpus has
  no reference words (or characters) the corpus rate is undefined and ``ValueError`` is raised.
* BLEU/chrF: passed to sacrebleu unchanged.
* :func:`accuracy`: an empty (normalised) reference raises ``ValueError``, since it would occur in
  every answer.
* :func:`token_f1`/:func:`agree`: two empty texts agree (F1 1.0); one empty and one not give 0.0.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Normalizer = Callable[[str], str]
NormalizeArg = bool | Normalizer

_ENGLISH = {"en", "eng", "english"}


# --- normalisation -----------------------------------------------------------------------------


def make_normalizer(language: str = "en", spelling_mapping: Mapping[str, str] | None = None) -> Normalizer:
    """Return a Whisper text normaliser for ``language`` ("en" → English rules, else basic rules).

    ``spelling_mapping`` (English only) maps British to American spellings, as in Whisper's
    ``normalizer.json``; the default is an empty map.
    """
    # Deferred: importing transformers.models.whisper pulls in torch (~1 s).
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if language.lower() in _ENGLISH:
        inner: Normalizer = EnglishTextNormalizer(dict(spelling_mapping or {}))
    else:
        if spelling_mapping:
            raise ValueError(f"spelling_mapping applies to English only; got language={language!r}")
        inner = BasicTextNormalizer()

    def normalizer(text: str) -> str:
        # BasicTextNormalizer leaves trailing/double spaces where punctuation was.
        return " ".join(inner(text).split())

    return normalizer


@functools.cache
def _default_normalizer(language: str) -> Normalizer:
    return make_normalizer(language)


def normalize(text: str, language: str = "en") -> str:
    """Normalise ``text`` the way Whisper's evaluation does (see the module docstring)."""
    return _default_normalizer(language.lower())(text)


def _resolve_normalizer(normalize_arg: NormalizeArg, language: str) -> Normalizer:
    if callable(normalize_arg):
        return normalize_arg
    if normalize_arg:
        return _default_normalizer(language.lower())
    return lambda text: text


# --- input checks ------------------------------------------------------------------------------


def _check_pair(references: Sequence[Any], hypotheses: Sequence[Any], what: str = "hypotheses") -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references and {what} must have the same length; "
            f"got {len(references)} references and {len(hypotheses)} {what}"
        )
    if not references:
        raise ValueError(f"need at least one sample; got 0 references and 0 {what}")


# --- error rates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCounts:
    """Edit-distance counts of one hypothesis against one reference, in words or characters."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def ref_len(self) -> int:
        """Length of the reference: every reference unit is a hit, a substitution or a deletion."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        """errors / ref_len; ``None`` when the reference is empty (rate undefined)."""
        return self.errors / self.ref_len if self.ref_len else None

    def as_dict(self) -> dict[str, int | float | None]:
        """Counts plus ``ref_len``, ``errors`` and ``rate``, ready for a per-sample JSONL row."""
        return {**asdict(self), "ref_len": self.ref_len, "errors": self.errors, "rate": self.rate}


def error_counts(
    references: Sequence[str],
    hypotheses: Sequence[str],
    unit: Literal["word", "char"] = "word",
    normalize: NormalizeArg = True,
    language: str = "en",
) -> list[ErrorCounts]:
    """Per-sample edit counts (word or character level) after optional normalisation.

    ``normalize`` is True (Whisper normaliser for ``language``), False (text as given, only
    whitespace-split), or any ``str -> str`` callable.
    """
    import jiwer

    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char'; got {unit!r}")
    _check_pair(references, hypotheses)
    norm = _resolve_normalizer(normalize, language)
    # Whitespace is collapsed in both cases so that CER never counts doubled spaces as errors.
    refs = [" ".join(norm(r).split()) for r in references]
    hyps = [" ".join(norm(h).split()) for h in hypotheses]
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    out = process(refs, hyps)
    return [_counts_from_alignment(chunks) for chunks in out.alignments]


def _counts_from_alignment(chunks: Sequence[Any]) -> ErrorCounts:
    counts = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
    for chunk in chunks:
        if chunk.type == "insert":
            counts["insert"] += chunk.hyp_end_idx - chunk.hyp_start_idx
        else:
            counts[chunk.type] += chunk.ref_end_idx - chunk.ref_start_idx
    return ErrorCounts(
        substitutions=counts["substitute"],
        deletions=counts["delete"],
        insertions=counts["insert"],
        hits=counts["equal"],
    )


def corpus_rate(counts: Sequence[ErrorCounts]) -> float:
    """Corpus error rate: total edits / total reference units (not a mean of per-sample rates)."""
    if not counts:
        raise ValueError("need at least one sample; got 0 counts")
    total_ref = sum(c.ref_len for c in counts)
    if total_ref == 0:
        raise ValueError(f"error rate is undefined: all {len(counts)} references are empty")
    return sum(c.errors for c in counts) / total_ref


def wer(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: NormalizeArg = True,
    language: str = "en",
) -> float:
    """Corpus word error rate as a fraction (0.25 = 25 %); may exceed 1 with many insertions."""
    return corpus_rate(error_counts(references, hypotheses, "word", normalize, language))


def cer(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: NormalizeArg = True,
    language: str = "en",
) -> float:
    """Corpus character error rate as a fraction; spaces between words count as characters."""
    return corpus_rate(error_counts(references, hypotheses, "char", normalize, language))


# --- translation metrics -----------------------------------------------------------------------


def bleu(references: Sequence[str], hypotheses: Sequence[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (0–100) with one reference per sample, via ``sacrebleu.corpus_bleu``.

    Text is scored as given (cased, detokenised), as sacrebleu expects; ``tokenize`` is sacrebleu's
    tokenizer name ("13a" default, "zh", "ja-mecab", "flores200" …).
    """
    import sacrebleu

    _check_pair(references, hypotheses)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


def chrf(references: Sequence[str], hypotheses: Sequence[str], word_order: int = 0) -> float:
    """Corpus chrF (0–100) via ``sacrebleu.corpus_chrf``; ``word_order=2`` gives chrF++."""
    import sacrebleu

    _check_pair(references, hypotheses)
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)], word_order=word_order).score)


# --- spoken question answering -----------------------------------------------------------------

# A sentence ends at . ! ? followed by whitespace (so "3.5" and "e.g.x" do not split), at a CJK
# full stop, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")


def first_sentence(text: str) -> str:
    """First non-empty sentence of ``text``, stripped; "" if there is none.

    Abbreviations such as "Mr. Smith" do end a sentence here; answers are compared on the first
    sentence only so that a long explanation after the answer does not dilute the match.
    """
    for part in _SENTENCE_END.split(text):
        if part.strip():
            return part.strip()
    return ""


def token_f1(a: str, b: str, language: str = "en") -> float:
    """SQuAD-style token F1 between two texts after Whisper normalisation (bag of tokens).

    Unlike SQuAD, articles are kept. Both empty → 1.0; exactly one empty → 0.0.
    """
    tokens_a = normalize(a, language).split()
    tokens_b = normalize(b, language).split()
    if not tokens_a or not tokens_b:
        return float(tokens_a == tokens_b)
    common = sum((Counter(tokens_a) & Counter(tokens_b)).values())
    if common == 0:
        return 0.0
    # = 2PR / (P + R) with P = common/len(a), R = common/len(b); one division keeps 4/5 exactly 0.8
    # so that a threshold of 0.8 is not missed by rounding.
    return 2 * common / (len(tokens_a) + len(tokens_b))


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")


def agree(answer_to_speech: str, answer_to_text: str, threshold: float = 0.8, language: str = "en") -> bool:
    """Whether two answers to the same question (asked by speech and by text) agree.

    They agree when their first sentences are equal after normalisation, or when the token F1 of
    the first sentences is at least ``threshold``. Two empty answers agree.
    """
    _check_threshold(threshold)
    a = first_sentence(answer_to_speech)
    b = first_sentence(answer_to_text)
    if normalize(a, language) == normalize(b, language):
        return True
    return token_f1(a, b, language) >= threshold


def same_first_sentence(answer_to_speech: str, answer_to_text: str, language: str = "en") -> bool:
    """The strict agreement: the two answers' first sentences are equal after normalisation.

    Unlike :func:`agree` no token-overlap threshold applies: "Paris is the capital." and "The capital
    is Paris." do not agree here. Two empty answers agree.
    """
    a = normalize(first_sentence(answer_to_speech), language)
    return a == normalize(first_sentence(answer_to_text), language)


def agreement_rate(pairs: Sequence[tuple[str, str]], threshold: float = 0.8, language: str = "en") -> float:
    """Fraction of ``(answer_to_speech, answer_to_text)`` pairs that :func:`agree`."""
    if not pairs:
        raise ValueError("need at least one pair; got 0 pairs")
    _check_threshold(threshold)
    return sum(agree(s, t, threshold, language) for s, t in pairs) / len(pairs)


def answer_found(answer: str, reference: str | Sequence[str], language: str = "en") -> bool:
    """Whether any accepted reference occurs in ``answer``, both normalised, on word boundaries.

    "4" is found in "the answer is 4" but not in "42". ``reference`` is one string or a list of
    accepted aliases. An empty normalised reference raises ``ValueError``.
    """
    aliases = [reference] if isinstance(reference, str) else list(reference)
    if not aliases:
        raise ValueError("reference must hold at least one accepted answer; got an empty list")
    padded_answer = f" {normalize(answer, language)} "
    for alias in aliases:
        norm_alias = normalize(alias, language)
        if not norm_alias:
            raise ValueError(f"reference {alias!r} is empty after normalisation; it would match any answer")
        if f" {norm_alias} " in padded_answer:
            return True
    return False


def accuracy(answers: Sequence[str], references: Sequence[str | Sequence[str]], language: str = "en") -> float:
    """Fraction of answers in which their reference is found (rule: :func:`answer_found`)."""
    _check_pair(references, answers, what="answers")
    return sum(answer_found(a, r, language) for a, r in zip(answers, references)) / len(answers)
