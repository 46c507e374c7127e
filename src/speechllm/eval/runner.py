"""`speechllm eval`: run a speech LLM over a manifest and score every sample by its task.

Tasks and what they are scored with (all from `speechllm.eval.metrics`):

- `asr`: word and character error rate of the answer against `target`, after Whisper's text
  normalisation; corpus rates are total edits / total reference units.
- `translate`: corpus BLEU and chrF (sacrebleu) against `target`, text as given; each row also
  carries its own chrF.
- `instruct` (spoken questions), the speech–text gap: the same model answers the question twice,
  once as speech and once as its transcript typed as text (`with_transcripts`: the audio parts
  replaced by `meta["question"]`). The two answers *agree* as defined by `metrics.agree` (first
  sentences equal after normalisation, or token F1 >= 0.8). Without LoRA-on-text the text twin is
  answered by the plain LLM, so the agreement measures how far speech input is from typed input.
  Accuracy: the reference is `meta["answer"]` when present (a string or a list of accepted
  aliases), else `target`; an answer is right when the normalised reference occurs in it on word
  boundaries (`metrics.answer_found`). Samples whose reference is empty after normalisation get no
  accuracy (and are not counted in its denominator).

A task outside these raises `ValueError` before any generation, unless `skip_unknown` is set:
then those samples are left out and counted in the summary as `skipped_<task>`.
Decoding is greedy and batched; samples are grouped by task and sorted by audio length inside each
task so that batches pad little (every item of a padded batch gets what it would get alone).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speechllm.data.audio import load_audio
from speechllm.data.manifest import Sample
from speechllm.eval import metrics
from speechllm.eval.report import SummaryValue, write_per_sample, write_summary

log = logging.getLogger(__name__)

TASKS = ("asr", "translate", "instruct")
PER_SAMPLE_FILE = "per_sample.jsonl"

Row = dict[str, Any]
Conversation = list[dict[str, Any]]
# conversations (audio parts hold 16 kHz waveforms) -> answers; the model, or a stand-in in tests.
Answerer = Callable[[list[Conversation]], list[str]]


@dataclass
class EvalConfig:
    """How `evaluate` runs and scores."""

    batch_size: int = 8
    """Conversations per generate call."""
    max_new_tokens: int = 128
    """Greedy decoding stops at end-of-sequence or after this many tokens."""
    language: str = "en"
    """Language of the texts, for Whisper normalisation (English rules for "en", basic otherwise)."""
    agreement_threshold: float = 0.8
    """Token F1 of the first sentences at or above which two answers agree (`metrics.agree`)."""
    skip_unknown: bool = False
    """Leave out samples of tasks other than asr/translate/instruct instead of raising ValueError."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.agreement_threshold <= 1.0:
            raise ValueError(f"agreement_threshold must be in (0, 1], got {self.agreement_threshold}")


def speech_conversation(sample: Sample, audios: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """The sample's messages with each audio part's index replaced by its waveform."""
    if len(audios) != len(sample.audio):
        raise ValueError(f"{sample.id}: {len(sample.audio)} audio files but {len(audios)} waveforms")
    out = []
    for m in sample.messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "audio", "audio": audios[p["audio"]]} if p["type"] == "audio" else p for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def instruct_reference(sample: Sample) -> str | list[str]:
    """The accepted answer(s) of a spoken question: `meta["answer"]` if present, else `target`."""
    answer = sample.meta.get("answer")
    if isinstance(answer, str) or (isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer)):
        return answer
    if answer is not None:
        raise ValueError(f"{sample.id}: meta.answer must be a string or a list of strings, got {answer!r}")
    return sample.target


def check_tasks(samples: Sequence[Sample], skip_unknown: bool) -> tuple[list[Sample], Counter[str]]:
    """Samples of known tasks, and the count of left-out samples per unknown task."""
    unknown = Counter(s.task for s in samples if s.task not in TASKS)
    if unknown and not skip_unknown:
        examples = [s.id for s in samples if s.task not in TASKS][:3]
        raise ValueError(
            f"no scoring for task(s) {dict(unknown)} (e.g. samples {examples}); speechllm eval scores {list(TASKS)}. "
            "Pass --skip-unknown to leave those samples out"
        )
    return [s for s in samples if s.task in TASKS], unknown


def _answer_all(answer: Answerer, conversations: Sequence[Callable[[], Conversation]], batch_size: int) -> list[str]:
    """Answers in batches; each conversation is built (its audio read) only when its batch runs."""
    out: list[str] = []
    for start in range(0, len(conversations), batch_size):
        out += answer([make() for make in conversations[start : start + batch_size]])
    return out


def _seconds(sample: Sample) -> float:
    import soundfile as sf

    return sum(sf.info(p).duration for p in sample.audio)


def _spoken(sample: Sample) -> Callable[[], Conversation]:
    return lambda: speech_conversation(sample, [load_audio(p) for p in sample.audio])


def evaluate(samples: Sequence[Sample], answer: Answerer, config: EvalConfig) -> tuple[list[Row], dict[str, Any]]:
    """Answer and score `samples`; returns per-sample rows (in manifest order) and the summary."""
    kept, skipped = check_tasks(samples, config.skip_unknown)
    if not kept:
        raise ValueError(f"nothing to evaluate: no sample of a known task {list(TASKS)} among {len(samples)}")
    rows: dict[str, Row] = {}
    summary: dict[str, Any] = {"samples": len(kept)}
    for task in TASKS:
        group = sorted((s for s in kept if s.task == task), key=_seconds)
        if not group:
            continue
        t0 = time.perf_counter()
        hyps = _answer_all(answer, [_spoken(s) for s in group], config.batch_size)
        scorer = {"asr": _score_asr, "translate": _score_translate, "instruct": _score_instruct}[task]
        task_rows, task_summary = scorer(group, hyps, answer, config)
        summary[f"{task}_samples"] = len(group)
        summary.update(task_summary)
        summary[f"{task}_seconds"] = round(time.perf_counter() - t0, 3)
        rows.update({r["id"]: r for r in task_rows})
        log.info("%s: %d samples scored", task, len(group))
    for task, n in sorted(skipped.items()):
        summary[f"skipped_{task}"] = n
    return [rows[s.id] for s in kept], summary


def _row(sample: Sample, reference: Any, hypothesis: str) -> Row:
    return {"id": sample.id, "task": sample.task, "reference": reference, "hypothesis": hypothesis}


def _score_asr(group: list[Sample], hyps: list[str], _: Answerer, config: EvalConfig) -> tuple[list[Row], dict]:
    refs = [s.target for s in group]
    words = metrics.error_counts(refs, hyps, "word", language=config.language)
    chars = metrics.error_counts(refs, hyps, "char", language=config.language)
    rows = [
        {**_row(s, r, h), "word": w.as_dict(), "char": c.as_dict()}
        for s, r, h, w, c in zip(group, refs, hyps, words, chars)
    ]
    summary: dict[str, Any] = {}
    # A corpus of empty references has no rate: report the counts and leave the rate out.
    if sum(w.ref_len for w in words):
        summary["asr_wer"] = metrics.corpus_rate(words)
    if sum(c.ref_len for c in chars):
        summary["asr_cer"] = metrics.corpus_rate(chars)
    return rows, summary


def _score_translate(group: list[Sample], hyps: list[str], _: Answerer, config: EvalConfig) -> tuple[list[Row], dict]:
    refs = [s.target for s in group]
    rows = [{**_row(s, r, h), "chrf": metrics.chrf([r], [h])} for s, r, h in zip(group, refs, hyps)]
    return rows, {"translate_bleu": metrics.bleu(refs, hyps), "translate_chrf": metrics.chrf(refs, hyps)}


def _found(answer_text: str, reference: str | list[str], language: str) -> bool | None:
    aliases = [reference] if isinstance(reference, str) else reference
    if not any(metrics.normalize(a, language) for a in aliases):
        return None  # no usable reference: no accuracy for this sample
    usable = [a for a in aliases if metrics.normalize(a, language)]
    return metrics.answer_found(answer_text, usable, language)


def _score_instruct(
    group: list[Sample], hyps: list[str], answer: Answerer, config: EvalConfig
) -> tuple[list[Row], dict]:
    from speechllm.data.transcripts import spoken_text, with_transcripts

    text_hyps = _answer_all(answer, [functools.partial(with_transcripts, s) for s in group], config.batch_size)
    lang, threshold = config.language, config.agreement_threshold
    rows, pairs = [], []
    for s, h, t in zip(group, hyps, text_hyps):
        reference = instruct_reference(s)
        row = {
            **_row(s, reference, h),
            "question": spoken_text(s),
            "text_hypothesis": t,
            "agree": metrics.agree(h, t, threshold, lang),
            "agreement_f1": metrics.token_f1(metrics.first_sentence(h), metrics.first_sentence(t), lang),
            "correct": _found(h, reference, lang),
            "text_correct": _found(t, reference, lang),
        }
        rows.append(row)
        pairs.append((h, t))
    summary: dict[str, Any] = {"instruct_agreement": metrics.agreement_rate(pairs, threshold, lang)}
    scored = [r for r in rows if r["correct"] is not None]
    if scored:
        summary["instruct_accuracy"] = sum(r["correct"] for r in scored) / len(scored)
        summary["instruct_text_accuracy"] = sum(r["text_correct"] for r in scored) / len(scored)
        summary["instruct_accuracy_samples"] = len(scored)
    return rows, summary


def model_answerer(model: Any, max_new_tokens: int) -> Answerer:
    """Greedy answers of a `SpeechLLM` (LoRA bypassed for text-only batches, as `generate` does)."""
    import torch

    from speechllm.inference.generation import GenerationConfig, generate

    def answer(conversations: list[list[dict[str, Any]]]) -> list[str]:
        with torch.inference_mode():
            return list(
                generate(model, conversations, GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False))
            )

    return answer


def bridge_answerer(model: Any) -> Answerer:
    """ASR by a token-bridge model: the text its LLM reads for each conversation's (one) audio,
    the bridge's path (`SpeechLLM.hear`), with no LLM generation."""
    import torch

    def answer(conversations: list[list[dict[str, Any]]]) -> list[str]:
        audios = []
        for i, conversation in enumerate(conversations):
            parts = [p for m in conversation if isinstance(m["content"], list) for p in m["content"]]
            found = [p["audio"] for p in parts if p.get("type") == "audio"]
            if len(found) != 1:
                raise ValueError(
                    f"bridge ASR needs exactly one audio per conversation; conversation {i} has {len(found)}"
                )
            audios.append(found[0])
        with torch.inference_mode():
            return list(model.hear(audios))

    return answer


def write_results(out_dir: str | Path, rows: list[Row], summary: dict[str, Any], title: str) -> dict[str, Path]:
    """per_sample.jsonl, summary.json and summary.md in `out_dir`; returns their paths."""
    out = Path(out_dir)
    per_sample = write_per_sample(out / PER_SAMPLE_FILE, rows)
    table: dict[str, SummaryValue] = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
    json_path, md_path = write_summary(out, table, title)
    return {"per_sample": per_sample, "summary_json": json_path, "summary_md": md_path}
