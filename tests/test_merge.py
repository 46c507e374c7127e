"""Two recognizers' hypotheses pooled and rescored by the LLM (`bridge.merge_with`): the pool, a
recognizer's score of a text it did not finish, the pick, the config's checks, and the wiring
through `hear`."""

from __future__ import annotations

import pytest
import torch

from speechllm.config import BridgeConfig
from speechllm.model.merge import Hearing, merged_pick, pooled, recognizer_score, window_hypotheses
from speechllm.model.rescore import TurnScorer
from speechllm.model.speech_llm import SILENT_TEXT
from speechllm.model.whisper_decoder import WhisperTextDecoder
from test_rescore import WORDS, _rescoring_model


def test_the_pool_takes_each_recognizers_best_distinct_texts_once():
    first = [("A.", -1.0), ("B.", -2.0), ("A.", -3.0), ("C.", -4.0)]
    second = [("B.", -0.5), ("D.", -1.5), ("E.", -9.0)]
    assert pooled(first, second, 2) == ["A.", "B.", "D."]
    assert pooled(first, second, 3) == ["A.", "B.", "C.", "D.", "E."]


def test_a_text_a_recognizer_did_not_finish_scores_its_worst_minus_the_floor():
    hyps = [("A.", -1.0), ("B.", -2.5), ("A.", -0.5)]
    assert recognizer_score(hyps, "A.", 4.0) == -0.5  # its best
    assert recognizer_score(hyps, "Z.", 4.0) == -6.5  # -2.5 - 4
    with pytest.raises(ValueError, match="no hypotheses"):
        recognizer_score([], "A.", 4.0)


def test_the_pick_weighs_the_llm_and_both_recognizers():
    first = [("heard", -1.0), ("typed", -3.0)]
    second = [("typed", -1.0)]
    calls = []

    def llm(texts):
        calls.append(texts)
        return [-10.0 if t == "heard" else -6.0 for t in texts]

    # heard: 0.5 * -10 + (-1 + (-1 - 4)) / 2 = -8; typed: 0.5 * -6 + (-3 + -1) / 2 = -5
    assert merged_pick(first, second, 3, llm, 0.5, 4.0) == ("typed", ["heard", "typed"])
    assert merged_pick(first, second, 3, llm, 0.0, 4.0)[0] == "typed"  # heard -3, typed -2
    assert merged_pick(first, second, 3, llm, 0.0, 0.0)[0] == "heard"  # heard (-1 + -1) / 2 = -1, typed -2
    calls.clear()
    assert merged_pick([("same", -1.0)], [("same", -2.0)], 3, llm, 0.5, 4.0) == ("same", ["same"])
    assert calls == []  # a pool of one: no LLM pass
    with pytest.raises(ValueError, match="2 pooled hypotheses but 1"):
        merged_pick(first, second, 3, lambda ts: [0.0], 0.5, 4.0)


def test_merge_with_needs_a_rescored_beam_of_the_whisper_recognizer():
    with pytest.raises(ValueError, match="merge_with"):
        BridgeConfig(mode="top1", recognizer="whisper", beam_size=5, rescore=0.0, merge_with="bundled:whisper-base")
    with pytest.raises(ValueError, match="merge_with"):
        BridgeConfig(mode="top1", recognizer="whisper", beam_size=1, rescore=0.5, merge_with="bundled:whisper-base")
    with pytest.raises(ValueError, match="merge_floor"):
        BridgeConfig(merge_floor=-1.0)
    BridgeConfig(mode="top1", recognizer="whisper", beam_size=5, rescore=0.5, merge_with="bundled:whisper-base")


def test_hear_picks_from_both_recognizers_hypotheses_and_keeps_the_chosen_turn(tiny_config, tone):
    """With a second recognizer, `hear` is `merged_pick` over both beams' hypotheses of the window, and
    the chosen turn (as the LLM ran it) is offered to the answer's prompt."""
    model, recognizer = _rescoring_model(tiny_config, rescore=0.5)
    arch = recognizer.arch
    torch.manual_seed(7)
    shifted = lambda ids: " ".join(WORDS[(i + 4) % len(WORDS)] for i in ids if i >= 3)  # noqa: E731
    other = WhisperTextDecoder(arch, detokenize=shifted)
    with torch.no_grad():
        other.embed_tokens.weight.mul_(0.05)  # flatter: a beam of distinct texts
    model.second = Hearing(model.encoder, other.eval())
    audio = tone(1.0)
    with torch.no_grad():
        features, lengths = model.processor.log_mel([audio])
        bridge = model.config.bridge
        args = (features, lengths, bridge.beam_size, bridge.max_tokens, bridge.tidy)
        (ours,), _ = window_hypotheses(Hearing(model.encoder, recognizer), *args)
        (theirs,), _ = window_hypotheses(model.second, *args)
        scorer = TurnScorer(model.llm, model.processor.tokenizer, None)
        expected, pool = merged_pick(ours, theirs, bridge.candidates, lambda ts: scorer([t or SILENT_TEXT for t in ts]),
                                     bridge.rescore, bridge.merge_floor)  # fmt: skip
        assert set(pool) - {t for t, _ in ours}, "the test needs a second recognizer that adds hypotheses"
        assert model.hear([audio]) == [expected]
        turn = model.take_heard_turn()
        assert turn is not None and turn.ids == scorer.turn_state(pool.index(expected)).ids


def test_window_hypotheses_come_from_the_beam_and_are_tidied(tiny_config, tone):
    model, recognizer = _rescoring_model(tiny_config, rescore=0.5)
    with torch.no_grad():
        features, lengths = model.processor.log_mel([tone(1.0), tone(0.5)])
        hyps, owner = window_hypotheses(Hearing(model.encoder, recognizer), features, lengths, 4, 3, tidy=True)
    assert owner == [0, 1] and len(hyps) == 2
    for window in hyps:
        assert window and all(t[:1] == t[:1].upper() for t, _ in window)  # tidied: a capital first
        assert all(lp <= 0 for _, lp in window)
