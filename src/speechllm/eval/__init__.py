"""Evaluation: text metrics (WER/CER, BLEU/chrF, QA accuracy, speech–text agreement) and reports.

jiwer and sacrebleu come with the ``[eval]`` extra and are imported only when a metric needs them.
"""

from speechllm.eval.metrics import (
    ErrorCounts,
    accuracy,
    agree,
    agreement_rate,
    answer_found,
    bleu,
    cer,
    chrf,
    corpus_rate,
    error_counts,
    first_sentence,
    make_normalizer,
    normalize,
    token_f1,
    wer,
)
from speechllm.eval.report import format_value, write_per_sample, write_summary

__all__ = [
    "ErrorCounts",
    "accuracy",
    "agree",
    "agreement_rate",
    "answer_found",
    "bleu",
    "cer",
    "chrf",
    "corpus_rate",
    "error_counts",
    "first_sentence",
    "format_value",
    "make_normalizer",
    "normalize",
    "token_f1",
    "wer",
    "write_per_sample",
    "write_summary",
]
