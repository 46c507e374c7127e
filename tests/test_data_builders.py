"""Dataset builders: manifests as specified, seeded choices, resume after a kill, held-out voices, CLI."""

import argparse
import json

import numpy as np
import pytest

from speechllm.data import builders, tts
from speechllm.data.augment import AugmentConfig
from speechllm.data.builders import (
    Question,
    SynthesisOptions,
    build_asr,
    build_instruct,
    read_questions,
    read_sentences,
    shipped_text,
    split_by_voice,
)
from speechllm.data.manifest import read_manifest


class FakeEngine:
    """A tone whose length follows the text: fast, and counts every synthesis."""

    name = "fake"
    calls: list[str] = []  # noqa: RUF012

    def voices(self):
        return ["a", "b", "c"]

    def synthesize(self, text, voice, rate=1.0):
        FakeEngine.calls.append(text)
        n = int(len(text) * 400 / rate)
        return (0.3 * np.sin(np.arange(n) * 0.1 * (1 + "abc".index(voice)))).astype(np.float32)


@pytest.fixture
def fake_tts(monkeypatch):
    monkeypatch.setitem(tts.ENGINES, "fake", FakeEngine)
    monkeypatch.setattr(tts, "_engines", {})
    FakeEngine.calls = []
    return FakeEngine


def options(seed=0):
    return SynthesisOptions(voices=["fake:a", "fake:b", "fake:c"], augment=AugmentConfig(noise_prob=1.0), seed=seed)


SENTENCES = [f"Sentence number {i} is here." for i in range(8)]


def test_shipped_text_sources_are_large_and_clean():
    sentences = read_sentences(shipped_text("sentences.txt"))
    questions = read_questions(shipped_text("questions.jsonl"))
    assert len(sentences) >= 1200 and len(set(sentences)) == len(sentences)
    assert len(questions) >= 600 and all(q.answer for q in questions)
    assert len({q.question for q in questions}) == len(questions)


def test_asr_manifest(tmp_path, fake_tts):
    samples = build_asr(SENTENCES, tmp_path, options(), workers=1, progress=False)
    assert read_manifest(tmp_path / "asr.jsonl") == samples
    s = samples[3]
    assert s.id == "asr-000003" and s.task == "asr" and s.target == SENTENCES[3]
    assert s.messages[0]["content"][0] == {"type": "audio", "audio": 0}
    assert s.messages[0]["content"][1]["text"] in builders.ASR_PROMPTS
    assert s.voice in options().voices and "snr_db" in s.meta["augment"]
    assert (tmp_path / "wav" / "asr-000003.wav").is_file()
    assert json.loads((tmp_path / "asr.jsonl").read_text().splitlines()[0])["audio"] == ["wav/asr-000000.wav"]


def test_choices_depend_on_seed_not_on_order(tmp_path, fake_tts):
    a = build_asr(SENTENCES, tmp_path / "a", options(seed=1), workers=1, progress=False)
    b = build_asr(SENTENCES[:4], tmp_path / "b", options(seed=1), workers=1, progress=False)
    c = build_asr(SENTENCES, tmp_path / "c", options(seed=2), workers=1, progress=False)
    assert [(s.voice, s.meta) for s in a[:4]] == [(s.voice, s.meta) for s in b]
    assert [s.voice for s in a] != [s.voice for s in c]


def test_resume_after_interruption_redoes_nothing(tmp_path, fake_tts):
    build_asr(SENTENCES, tmp_path / "full", options(), workers=1, progress=False)
    reference = (tmp_path / "full" / "asr.jsonl").read_text()

    out = tmp_path / "resumed"
    build_asr(SENTENCES, out, options(), workers=1, progress=False)
    # Simulate a kill: the manifest holds 4 whole lines and a half-written fifth; wav 2 was lost.
    lines = (out / "asr.jsonl").read_text().splitlines(keepends=True)
    (out / "asr.jsonl").write_text("".join(lines[:4]) + lines[4][:30])
    (out / "wav" / "asr-000002.wav").unlink()
    for i in range(5, 8):
        (out / "wav" / f"asr-{i:06d}.wav").unlink()
    FakeEngine.calls = []
    samples = build_asr(SENTENCES, out, options(), workers=1, progress=False)
    assert FakeEngine.calls == [SENTENCES[i] for i in (2, 4, 5, 6, 7)]
    assert (out / "asr.jsonl").read_text().replace("resumed", "full") == reference
    assert len(samples) == 8

    FakeEngine.calls = []
    build_asr(SENTENCES, out, options(), workers=1, progress=False)
    assert FakeEngine.calls == []


def test_resume_with_other_parameters_is_refused(tmp_path, fake_tts):
    build_asr(SENTENCES, tmp_path, options(seed=0), workers=1, progress=False)
    with pytest.raises(ValueError, match=r"other parameters \(\['seed'\]\)"):
        build_asr(SENTENCES, tmp_path, options(seed=5), workers=1, progress=False)


def test_instruct_answers_from_data_mapping_and_callable(tmp_path, fake_tts):
    questions = [
        Question("q0", "What is two plus two?", "Four."),
        Question("q1", "Which planet is red?"),
        Question("q2", "Name a colour."),
    ]
    asked = []

    def answer_fn(q):
        asked.append(q)
        return " Blue. "

    samples = build_instruct(
        questions, tmp_path, options(), answers={"q1": "Mars."}, answer_fn=answer_fn,
        mixed_fraction=0.0, system_prompt="Be brief.", workers=1, progress=False,
    )  # fmt: skip
    assert [s.target for s in samples] == ["Four.", "Mars.", "Blue."]
    assert asked == ["Name a colour."]
    assert samples[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "audio", "audio": 0}]},
    ]
    assert FakeEngine.calls == [q.question for q in questions]  # the question is what is spoken

    asked.clear()
    build_instruct(questions, tmp_path, options(), answers={"q1": "Mars."}, answer_fn=answer_fn,
                   mixed_fraction=0.0, system_prompt="Be brief.", workers=1, progress=False)  # fmt: skip
    assert asked == []  # resumed samples keep their answers; the LLM is not asked again

    with pytest.raises(ValueError, match=r"'q1' .* has no answer"):
        build_instruct(questions, tmp_path / "x", options(), workers=1, progress=False)


def test_instruct_mixed_speech_and_text(tmp_path, fake_tts):
    questions = [Question(f"q{i}", f"Question {i}?", f"Answer {i}.") for i in range(40)]
    samples = build_instruct(questions, tmp_path, options(), mixed_fraction=0.5, workers=1, progress=False)
    modes = {s.meta["mode"] for s in samples}
    assert modes == {"spoken", "mixed", "repeat"}
    for s in samples:
        parts = s.messages[-1]["content"]
        if s.meta["mode"] == "spoken":
            assert parts == [{"type": "audio", "audio": 0}]
        else:
            assert parts[0]["type"] == "text" and parts[1] == {"type": "audio", "audio": 0}
        if s.meta["mode"] == "repeat":
            assert s.target == f"{s.meta['question']} Answer {s.id[-2:].lstrip('0') or '0'}."


def test_split_by_voice(tmp_path, fake_tts):
    samples = build_asr(SENTENCES * 3, tmp_path, options(), workers=1, progress=False)
    train, test = split_by_voice(samples, ["fake:b"])
    assert test and train and len(train) + len(test) == len(samples)
    assert {s.voice for s in test} == {"fake:b"} and "fake:b" not in {s.voice for s in train}
    assert len(split_by_voice(samples, ["fake:[ab]"])[1]) > len(test)
    with pytest.raises(ValueError, match="match no sample"):
        split_by_voice(samples, ["fake:z"])


def test_cli_asr_instruct_split(tmp_path, fake_tts, capsys):
    from speechllm.data.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    text = tmp_path / "s.txt"
    text.write_text("\n".join(SENTENCES) + "\n\n")
    common = ["--voices", "fake:*", "--workers", "1", "--quiet", "--out", str(tmp_path / "d")]
    for argv in (["data", "asr", "--text", str(text), *common], ["data", "instruct", "--num", "5", *common]):
        args = parser.parse_args(argv)
        args.func(args)
    assert len(read_manifest(tmp_path / "d" / "asr.jsonl")) == 8
    assert len(read_manifest(tmp_path / "d" / "instruct.jsonl")) == 5
    args = parser.parse_args(["data", "split", "--manifest", str(tmp_path / "d" / "asr.jsonl"),
                              "--heldout-voices", "fake:[ab]"])  # fmt: skip
    args.func(args)
    test = read_manifest(tmp_path / "d" / "asr.test.jsonl")
    assert test and {s.voice for s in test} <= {"fake:a", "fake:b"}
    assert "train:" in capsys.readouterr().out


def test_espeak_build_with_a_process_pool(tmp_path):
    pytest.importorskip("espeakng_loader")
    opts = SynthesisOptions(voices=["espeak:en-us", "espeak:en-gb-x-rp+f2"], seed=0)
    samples = build_asr(SENTENCES[:4], tmp_path, opts, workers=2, progress=False)
    assert [s.id for s in samples] == [f"asr-{i:06d}" for i in range(4)]
    assert all(s.meta["seconds"] > 0.5 for s in samples)
