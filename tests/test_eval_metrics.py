"""Metric and report tests on hand-made cases whose answers are known."""

from __future__ import annotations

import json

import pytest

from speechllm.eval import (
    ErrorCounts,
    accuracy,
    agree,
    agreement_rate,
    bleu,
    cer,
    chrf,
    error_counts,
    first_sentence,
    make_normalizer,
    normalize,
    token_f1,
    wer,
    write_per_sample,
    write_summary,
)

sacrebleu = pytest.importorskip("sacrebleu")
pytest.importorskip("jiwer")


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("I won't go.", "i will not go"),
        ("Mr. Smith", "mister smith"),
        ("twenty five", "25"),
        ("one hundred and one", "101"),
        ("Um, yeah.", "yeah"),
        ("  spaced   out  ", "spaced out"),
        ("", ""),
    ],
)
def test_normalize_english(text, expected):
    assert normalize(text) == expected


def test_normalize_non_english_keeps_diacritics_and_trims_spaces():
    assert normalize("Bonjour, le Monde! Déjà-vu", language="fr") == "bonjour le monde déjà vu"


def test_spelling_mapping_is_applied_only_when_given():
    assert normalize("The colour") == "the colour"
    assert make_normalizer("en", {"colour": "color"})("The colour") == "the color"
    with pytest.raises(ValueError, match="English only"):
        make_normalizer("fr", {"colour": "color"})


# --- WER / CER ---------------------------------------------------------------------------------


def test_wer_one_substitution_in_four_words_is_a_quarter():
    assert wer(["the cat sat down"], ["the cat sat up"]) == 0.25
    [counts] = error_counts(["the cat sat down"], ["the cat sat up"])
    assert counts == ErrorCounts(substitutions=1, deletions=0, insertions=0, hits=3)
    assert counts.as_dict() == {
        "substitutions": 1,
        "deletions": 0,
        "insertions": 0,
        "hits": 3,
        "ref_len": 4,
        "errors": 1,
        "rate": 0.25,
    }


def test_wer_normalisation_removes_case_and_punctuation_errors():
    assert wer(["Hello, World!"], ["hello world"]) == 0.0
    assert wer(["Hello, World!"], ["hello world"], normalize=False) == 1.0
    assert wer(["Hello"], ["HELLO"], normalize=str.lower) == 0.0


def test_wer_is_corpus_level_not_mean_of_samples():
    refs = ["a b c d e f g h i j", "x"]
    hyps = ["a b c d e f g h i j", "y"]
    # One error over 11 reference words, not mean(0/10, 1/1) = 0.5.
    assert wer(refs, hyps) == pytest.approx(1 / 11)


def test_counts_for_deletion_and_insertion():
    deletion, insertion = error_counts(["a b c", "a b"], ["a c", "a b c"], normalize=False)
    assert deletion == ErrorCounts(substitutions=0, deletions=1, insertions=0, hits=2)
    assert insertion == ErrorCounts(substitutions=0, deletions=0, insertions=1, hits=2)


def test_empty_reference_counts_insertions_and_has_no_rate():
    empty, full = error_counts(["", "a b"], ["x y", "a b"], normalize=False)
    assert empty.insertions == 2 and empty.rate is None
    assert full.rate == 0.0
    assert wer(["", "a b"], ["x y", "a b"], normalize=False) == 1.0  # 2 insertions / 2 ref words
    with pytest.raises(ValueError, match="all 2 references are empty"):
        wer(["", "um"], ["a", "b"])  # "um" normalises to ""


def test_cer_known_cases():
    assert cer(["abcd"], ["abxd"]) == 0.25
    # "hello world" has 11 characters (the space counts); one deletion.
    assert cer(["Hello World"], ["hello word"]) == pytest.approx(1 / 11)
    [counts] = error_counts(["Hello World"], ["hello word"], unit="char")
    assert (counts.deletions, counts.hits) == (1, 10)


def test_error_counts_rejects_unknown_unit():
    with pytest.raises(ValueError, match="'phone'"):
        error_counts(["a"], ["a"], unit="phone")


# --- BLEU / chrF -------------------------------------------------------------------------------


def test_bleu_identical_is_100():
    assert bleu(["The cat sat on the mat."], ["The cat sat on the mat."]) == pytest.approx(100.0)


def test_bleu_matches_sacrebleu_reference():
    refs = ["The cat sat on the mat.", "It is raining in Paris today."]
    hyps = ["The cat sat on a mat.", "Today it rains in Paris."]
    expected = sacrebleu.metrics.BLEU().corpus_score(hyps, [refs]).score
    assert 0.0 < expected < 100.0
    assert bleu(refs, hyps) == pytest.approx(expected)


def test_chrf_known_values():
    refs = ["The cat sat on the mat.", "It is raining in Paris today."]
    hyps = ["The cat sat on a mat.", "Today it rains in Paris."]
    assert chrf(refs, refs) == pytest.approx(100.0)
    assert chrf(["abc"], ["xyz"]) == 0.0
    assert chrf(refs, hyps) == pytest.approx(sacrebleu.metrics.CHRF().corpus_score(hyps, [refs]).score)
    assert chrf(refs, hyps, word_order=2) == pytest.approx(
        sacrebleu.metrics.CHRF(word_order=2).corpus_score(hyps, [refs]).score
    )


# --- first sentence, token F1, agreement -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris. It is the capital.", "Paris."),
        ("It is 3.5 km away! Far.", "It is 3.5 km away!"),
        ("\n\nYes\nbecause", "Yes"),
        ("你好。世界", "你好。"),
        ("No terminator", "No terminator"),
        ("   ", ""),
    ],
)
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_token_f1_hand_computed():
    # 2 of 3 predicted tokens are right (precision 2/3), both reference tokens found (recall 1).
    assert token_f1("Paris is nice", "paris, nice") == pytest.approx(0.8)
    assert token_f1("a b", "c d") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0


def test_agree_edge_cases():
    assert agree("Paris!", "paris.")  # exact after normalisation
    assert agree("Paris is nice. Unrelated detail.", "Paris nice. Something else.")  # F1 0.8
    assert not agree("Paris is nice.", "Paris nice.", threshold=0.81)
    assert not agree("London.", "Paris.")
    assert not agree("Paris.", "")
    assert agree("", "   ")  # two empty answers agree
    with pytest.raises(ValueError, match="got 0"):
        agree("a", "a", threshold=0)


def test_agreement_rate():
    pairs = [("Paris.", "paris"), ("Yes.", "No."), ("Twenty five.", "25"), ("A b c d.", "a b c d e f")]
    # The last pair: F1 = 2 * 1 * (4/6) / (1 + 4/6) = 0.8 -> agrees.
    assert agreement_rate(pairs) == 0.75
    with pytest.raises(ValueError, match="0 pairs"):
        agreement_rate([])


def test_accuracy_matches_on_word_boundaries():
    answers = ["The answer is 4.", "The answer is 42.", "It is Paris, France.", "I do not know."]
    references = ["four", "4", ["Paris", "Lutetia"], "London"]
    # "four" normalises to "4"; "4" is not found inside "42".
    assert accuracy(answers, references) == 0.5
    with pytest.raises(ValueError, match="empty after normalisation"):
        accuracy(["anything"], ["uh"])


# --- input errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [wer, cer, bleu, chrf])
def test_length_mismatch_names_both_lengths(metric):
    with pytest.raises(ValueError, match="got 2 references and 1 hypotheses"):
        metric(["a", "b"], ["a"])


@pytest.mark.parametrize("metric", [wer, cer, bleu, chrf, accuracy])
def test_empty_inputs_raise(metric):
    with pytest.raises(ValueError, match="need at least one sample"):
        metric([], [])


def test_accuracy_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="got 1 references and 2 answers"):
        accuracy(["a", "b"], ["a"])


# --- reports -----------------------------------------------------------------------------------


def test_write_per_sample_roundtrip_and_atomic_failure(tmp_path):
    path = tmp_path / "sub" / "samples.jsonl"
    rows = [{"id": "a", "hyp": "déjà", **ErrorCounts(1, 0, 0, 3).as_dict()}, {"id": "b", "rate": None}]
    assert write_per_sample(path, rows) == path
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert "déjà" in lines[0]  # not ASCII-escaped

    with pytest.raises(TypeError):
        write_per_sample(path, [{"id": "c", "bad": object()}])
    assert path.read_text(encoding="utf-8").splitlines() == lines  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.jsonl"]  # no temp left


def test_write_summary_contents(tmp_path):
    summary = {"wer": 0.12345, "test_cer": 0.05, "bleu": 27.456, "samples": 100, "model": "tiny|v1"}
    json_path, md_path = write_summary(tmp_path, summary, title="LibriSpeech test-clean")
    assert (json_path.name, md_path.name) == ("summary.json", "summary.md")
    assert json.loads(json_path.read_text()) == {"title": "LibriSpeech test-clean", "metrics": summary}
    assert md_path.read_text().splitlines() == [
        "# LibriSpeech test-clean",
        "",
        "| metric | value |",
        "|---|---:|",
        "| wer | 12.35% |",
        "| test_cer | 5.00% |",
        "| bleu | 27.46 |",
        "| samples | 100 |",
        "| model | tiny\\|v1 |",
    ]


def test_write_summary_explicit_percent_keys_and_bad_values(tmp_path):
    _, md_path = write_summary(tmp_path, {"wer": 0.5, "score": 0.5}, "t", percent_keys={"score"})
    assert md_path.read_text().splitlines()[-2:] == ["| wer | 0.50 |", "| score | 50.00% |"]
    with pytest.raises(ValueError, match=r"'wer'.*finite"):
        write_summary(tmp_path, {"wer": float("nan")}, "t")
    with pytest.raises(TypeError, match="'wer'"):
        write_summary(tmp_path, {"wer": None}, "t")  # type: ignore[dict-item]
