"""The held-out evaluation's parts: telephone channel, transcript cleaning, agreement and accuracy scoring."""

import numpy as np
import pytest

from speechllm.data.channel import mu_law, telephone_channel
from speechllm.data.manifest import Sample
from speechllm.data.transcripts import clean_transcript, unique_transcripts
from speechllm.eval.heldout import asr_figures, cached_text_answers, qa_figures
from speechllm.eval.metrics import first_sentence, same_first_sentence


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / 16000)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_telephone_channel_keeps_length_and_the_band_only():
    noise = (0.1 * np.random.default_rng(0).standard_normal(16000 * 2 + 37)).astype(np.float32)
    out = telephone_channel(noise)
    assert out.shape == noise.shape and out.dtype == np.float32
    # white noise: equal energy per Hz in; out of band it must fall by far more than in band
    for lo, hi in [(0, 200), (3600, 8000)]:
        kept = band_energy(out, lo, hi) / band_energy(noise, lo, hi)
        assert kept < 0.01, (lo, hi, kept)
    assert band_energy(out, 500, 3000) / band_energy(noise, 500, 3000) > 0.8


def test_mu_law_round_trip_is_close_and_coarse():
    x = np.linspace(-1, 1, 2001, dtype=np.float32)
    y = mu_law(x)
    assert np.max(np.abs(y - x)) < 0.04  # 8-bit mu-law: the largest steps are near full scale
    assert len(np.unique(y)) <= 255  # quantised to 8 bits
    assert mu_law(np.zeros(4))[0] == 0.0
    with pytest.raises(ValueError, match="got 1"):
        mu_law(x, bits=1)


def test_clean_transcript_drops_markup_and_keeps_hesitated_words():
    assert clean_transcript("montreal <hes-forced> aligner") == "montreal forced aligner"
    assert clean_transcript("[laughter] montreal <cutoff-forced> forced <unk> aligner [laughter]") == (
        "montreal forced aligner"
    )
    assert clean_transcript("cough here <VOCNOISE> yeah") == "cough here yeah"
    assert clean_transcript("<cutoff-a> <unk>") == ""


def test_unique_transcripts_skips_exact_repeats_case_insensitively():
    items = [("a", "montreal forced aligner"), ("b", "Montreal forced aligner"), ("c", "the montreal forced aligner")]
    assert unique_transcripts(items) == [("a", "montreal forced aligner"), ("c", "the montreal forced aligner")]


def test_same_first_sentence_is_strict_on_the_first_sentence_only():
    assert first_sentence("Paris is the capital. It is large.") == "Paris is the capital."
    assert same_first_sentence("Paris is the capital of France. It is big.", "paris is the capital of france!")
    assert not same_first_sentence("The capital of France is Paris.", "Paris is the capital of France.")
    assert same_first_sentence("", "")
    assert not same_first_sentence("Paris.", "")


def _qa_row(spoken: str, typed: str, correct: bool, text_correct: bool, agree: bool) -> dict:
    return {"hypothesis": spoken, "text_hypothesis": typed, "correct": correct, "text_correct": text_correct,
            "agree": agree}  # fmt: skip


def test_qa_figures_counts_agreement_and_accuracy():
    rows = [
        _qa_row("Paris. More text.", "paris", True, True, True),  # agree, both right
        _qa_row("It is blue.", "The sky is blue.", True, True, False),  # disagree, both right
        _qa_row("I do not know.", "Seven.", False, True, False),  # disagree, typed right
        _qa_row("Four", "Four", False, False, True),  # agree, both wrong
    ]
    figures = qa_figures(rows)
    assert figures["n"] == 4
    assert figures["agreement"] == 0.5 and figures["agree_f1"] == 0.5
    assert figures["spoken_accuracy"] == 0.5 and figures["typed_accuracy"] == 0.75
    assert figures["spoken_over_typed"] == pytest.approx(2 / 3)


def _asr_sample(i: int, text: str, source: str) -> Sample:
    content = [{"type": "audio", "audio": 0}, {"type": "text", "text": "Transcribe the audio."}]
    return Sample(
        f"x{i}", "asr", [f"/a/{i}.wav"], [{"role": "user", "content": content}], text, meta={"source": source}
    )


def test_asr_figures_per_source_and_whole():
    samples = [_asr_sample(0, "red green blue black", "a"), _asr_sample(1, "cat dog", "b")]
    counts = [  # model: 1 error of 4 words in a, 2 of 2 in b
        {"substitutions": 1, "deletions": 0, "insertions": 0, "hits": 3},
        {"substitutions": 0, "deletions": 2, "insertions": 0, "hits": 0},
    ]
    rows = [{"id": s.id, "word": c} for s, c in zip(samples, counts)]
    whisper = {"x0": "red green blue black", "x1": "cat"}
    by_group = {g["group"]: g for g in asr_figures(rows, samples, whisper)}
    assert by_group["all"]["n"] == 2 and by_group["all"]["model_wer"] == pytest.approx(3 / 6)
    assert by_group["all"]["whisper_wer"] == pytest.approx(1 / 6)
    assert by_group["a"]["model_wer"] == pytest.approx(1 / 4) and by_group["a"]["whisper_wer"] == 0.0
    assert by_group["b"]["model_wer"] == 1.0 and by_group["b"]["whisper_wer"] == 0.5


def test_cached_text_answers_answers_each_typed_conversation_once():
    calls = []

    def answer(conversations):
        calls.append(len(conversations))
        return [f"a{sum(calls)}-{i}" for i in range(len(conversations))]

    cached = cached_text_answers(answer)
    typed = [{"role": "user", "content": "What is two plus two?"}]
    spoken = [{"role": "user", "content": [{"type": "audio", "audio": np.zeros(3)}]}]
    first = cached([typed, spoken])
    second = cached([spoken, typed])
    assert second[1] == first[0]  # the typed answer comes from the cache
    assert calls == [2, 1]  # the second call only ran the spoken conversation
