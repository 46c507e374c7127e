"""speechllm eval: per-sample rows, summaries and the speech–text gap, on a tiny manifest."""

from __future__ import annotations

import json

import pytest

from speechllm.cli import main
from speechllm.data.audio import save_wav
from speechllm.data.manifest import Sample, write_manifest
from speechllm.eval.runner import EvalConfig, evaluate, instruct_reference, write_results
from speechllm.model import save_pretrained


def _audio_turn(text: str | None = None) -> list[dict]:
    parts: list[dict] = [{"type": "audio", "audio": 0}]
    if text:
        parts.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@pytest.fixture()
def manifest(tmp_path, tone):
    samples = []
    for i, (task, target, meta) in enumerate([
        ("asr", "the cat sat on the mat", {}),
        ("translate", "le chat est assis", {}),
        ("instruct", "The capital of France is Paris.", {"question": "What is the capital of France?"}),
        ("instruct", "It is four.", {"question": "What is two plus two?", "answer": ["4", "four"]}),
    ]):  # fmt: skip
        wav = tmp_path / f"{i}.wav"
        save_wav(wav, tone(0.5 + 0.2 * i, seed=i))
        samples.append(
            Sample(id=f"s{i}", task=task, audio=[str(wav)], messages=_audio_turn(), target=target, meta=meta)
        )
    path = tmp_path / "m.jsonl"
    write_manifest(path, samples)
    return path


def fake_answerer(conversations):
    """A fixed answer to speech and another to text: known WER, agreement and accuracy."""
    out = []
    for conv in conversations:
        has_audio = any(
            isinstance(c, list) and any(p["type"] == "audio" for p in c) for c in (m["content"] for m in conv)
        )
        out.append("the cat sat on a mat" if has_audio else "Paris is the capital.")
    return out


def test_scores_by_task_with_known_answers(manifest):
    from speechllm.data.manifest import read_manifest

    rows, summary = evaluate(read_manifest(manifest), fake_answerer, EvalConfig(batch_size=3))
    assert [r["id"] for r in rows] == ["s0", "s1", "s2", "s3"]
    asr = rows[0]
    assert asr["word"]["substitutions"] == 1 and asr["word"]["ref_len"] == 6
    assert summary["asr_wer"] == pytest.approx(1 / 6)
    assert summary["asr_cer"] == pytest.approx(asr["char"]["errors"] / asr["char"]["ref_len"])
    assert {"translate_bleu", "translate_chrf"} <= set(summary) and "chrf" in rows[1]
    gap = rows[2]
    assert gap["question"] == "What is the capital of France?"
    assert gap["text_hypothesis"] == "Paris is the capital." and gap["hypothesis"] == "the cat sat on a mat"
    assert gap["agree"] is False and summary["instruct_agreement"] == 0.0
    # s2's reference is its target (a sentence, not found); s3's is meta.answer (aliases, not found either)
    assert rows[3]["reference"] == ["4", "four"]
    assert summary["instruct_accuracy"] == 0.0 and summary["instruct_accuracy_samples"] == 2
    assert summary["instruct_samples"] == 2 and summary["samples"] == 4


def test_agreement_when_speech_and_text_answers_match(manifest):
    from speechllm.data.manifest import read_manifest

    samples = [s for s in read_manifest(manifest) if s.task == "instruct"]
    rows, summary = evaluate(samples, lambda convs: ["Paris! And more."] * len(convs), EvalConfig())
    assert all(r["agree"] for r in rows) and summary["instruct_agreement"] == 1.0
    assert rows[0]["correct"] is False and summary["instruct_text_accuracy"] == 0.0


def test_instruct_reference_prefers_meta_answer():
    s = Sample(id="a", task="instruct", audio=["x.wav"], messages=_audio_turn(), target="long", meta={"answer": "4"})
    assert instruct_reference(s) == "4"
    s.meta = {}
    assert instruct_reference(s) == "long"


def test_unknown_task_is_refused_or_skipped(manifest, tmp_path):
    from speechllm.data.manifest import read_manifest

    samples = read_manifest(manifest)
    samples[1].task = "summarise"
    with pytest.raises(ValueError, match=r"summarise.*s1.*--skip-unknown"):
        evaluate(samples, fake_answerer, EvalConfig())
    rows, summary = evaluate(samples, fake_answerer, EvalConfig(skip_unknown=True))
    assert [r["id"] for r in rows] == ["s0", "s2", "s3"] and summary["skipped_summarise"] == 1
    paths = write_results(tmp_path / "out", rows, summary, "t")
    assert "skipped_summarise" in paths["summary_md"].read_text()


def test_cli_writes_per_sample_and_summary(manifest, tiny_model, tmp_path, capsys):
    model_dir = save_pretrained(tiny_model, tmp_path / "model")
    out = tmp_path / "eval"
    rc = main(["eval", "--manifest", str(manifest), "--model", str(model_dir), "--out", str(out),
               "--limit", "3", "--batch-size", "2", "--max-new-tokens", "4"])  # fmt: skip
    assert rc == 0
    rows = [json.loads(line) for line in (out / "per_sample.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s0", "s1", "s2"]
    assert {"id", "task", "reference", "hypothesis"} <= set(rows[0]) and "word" in rows[0] and "char" in rows[0]
    assert {"text_hypothesis", "agree", "agreement_f1", "correct"} <= set(rows[2])
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    assert {"asr_wer", "asr_cer", "translate_bleu", "translate_chrf", "instruct_agreement"} <= set(summary)
    assert "| asr_wer |" in (out / "summary.md").read_text()
    assert "asr_wer" in capsys.readouterr().out


def test_cli_unknown_task_fails_before_loading(manifest, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text().replace('"task": "translate"', '"task": "summarise"'))
    assert main(["eval", "--manifest", str(bad), "--model", str(tmp_path / "missing")]) == 2
    assert "summarise" in capsys.readouterr().err
