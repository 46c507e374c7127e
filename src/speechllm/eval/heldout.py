"""Scoring of the held-out table (benchmarks/heldout_table.py): speech vs typed answers, WER per source.

- `qa_figures`: agreement (first sentences equal after normalisation, `metrics.same_first_sentence`),
  the looser `metrics.agree`, and accuracy of spoken and typed answers and their ratio, from the
  instruct rows of `runner.evaluate`.
- `asr_figures`: corpus WER of the model and of a reference recognizer (Whisper tiny.en's own decoder)
  on the same samples, for the whole set and per `meta.source`.
- `cached_text_answers`: an answerer that answers each typed conversation once (the typed twins of
  the spoken questions repeat across the clean and telephone sets).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from speechllm.data.manifest import Sample
from speechllm.data.transcripts import spoken_text
from speechllm.eval import metrics
from speechllm.eval.runner import Answerer, EvalConfig, evaluate


def whisper_wer(samples: list[Sample], hyps: dict[str, str]) -> float:
    return metrics.wer([spoken_text(s) for s in samples], [hyps[s.id] for s in samples])


def cached_text_answers(answer: Answerer) -> Answerer:
    """`answer`, remembering its answers to text-only conversations (the typed twins repeat across sets)."""
    memo: dict[str, str] = {}

    def is_text(conversation: list[dict[str, Any]]) -> bool:
        return all(isinstance(m["content"], str) for m in conversation)

    def wrapped(conversations: list[list[dict[str, Any]]]) -> list[str]:
        keys = [json.dumps(c, sort_keys=True) if is_text(c) else None for c in conversations]
        todo = [c for c, k in zip(conversations, keys) if k is None or k not in memo]
        fresh = iter(answer(todo) if todo else [])
        out = []
        for k in keys:
            if k is not None and k in memo:
                out.append(memo[k])
                continue
            text = next(fresh)
            if k is not None:
                memo[k] = text
            out.append(text)
        return out

    return wrapped


def qa_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement and accuracy of spoken vs typed answers, from `runner.evaluate`'s instruct rows."""
    n = len(rows)
    strict = sum(metrics.same_first_sentence(r["hypothesis"], r["text_hypothesis"]) for r in rows)
    scored = [r for r in rows if r["correct"] is not None]
    spoken = sum(bool(r["correct"]) for r in scored) / len(scored)
    typed = sum(bool(r["text_correct"]) for r in scored) / len(scored)
    return {
        "n": n,
        "agreement": strict / n,
        "agree_f1": sum(bool(r["agree"]) for r in rows) / n,
        "spoken_accuracy": spoken,
        "typed_accuracy": typed,
        "spoken_over_typed": spoken / typed if typed else None,
    }


def asr_figures(rows: list[dict[str, Any]], samples: list[Sample], whisper: dict[str, str]) -> list[dict[str, Any]]:
    """One figure row for the whole set and, for the human set, one per source."""
    by_id = {s.id: s for s in samples}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups["all"].append(r)
        source = by_id[r["id"]].meta.get("source")
        if source:
            groups[source].append(r)
    out = []
    for group, members in groups.items():
        counts = [metrics.ErrorCounts(**{k: r["word"][k] for k in ("substitutions", "deletions", "insertions", "hits")})
                  for r in members]  # fmt: skip
        chosen = [by_id[r["id"]] for r in members]
        out.append({"group": group, "n": len(members), "model_wer": metrics.corpus_rate(counts),
                    "whisper_wer": whisper_wer(chosen, whisper)})  # fmt: skip
    return out


def run_set(name: str, samples: list[Sample], answer: Answerer, config: EvalConfig, whisper: dict[str, str]) -> dict:
    """Answer and score one set: `qa` figures for spoken questions ("spoken_qa*"), else `asr` rows; plus `rows`."""
    t0 = time.perf_counter()
    rows, _ = evaluate(samples, answer, config)
    result: dict[str, Any] = {"set": name, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    if name.startswith("spoken_qa"):
        result["qa"] = {**qa_figures(rows), "whisper_question_wer": whisper_wer(samples, whisper)}
    else:
        result["asr"] = asr_figures(rows, samples, whisper)
    return result


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(title: str, results: list[dict[str, Any]]) -> str:
    lines = [f"## {title}", "", "| ASR set | n | model WER | Whisper tiny.en WER |", "|---|---|---|---|"]
    for r in results:
        for g in r.get("asr", []):
            label = r["set"] if g["group"] == "all" else f"{r['set']} / {g['group']}"
            lines.append(f"| {label} | {g['n']} | {g['model_wer']:.3f} | {g['whisper_wer']:.3f} |")
    lines += ["", "| spoken questions | n | agreement | agree (F1≥0.8) | spoken acc | typed acc | spoken/typed "
              "| Whisper WER on questions |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        q = r.get("qa")
        if q:
            lines.append(f"| {r['set']} | {q['n']} | {_pct(q['agreement'])} | {_pct(q['agree_f1'])} | "
                         f"{_pct(q['spoken_accuracy'])} | {_pct(q['typed_accuracy'])} | {_pct(q['spoken_over_typed'])} "
                         f"| {q['whisper_question_wer']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"
