"""N-best rescoring of the whisper recognizer by the LLM: candidates, the log-linear pick, the
LLM's turn scores (the cached template start changes nothing), and the wiring through `hear`."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import LLMCalls
from speechllm.config import BridgeConfig
from speechllm.model.rescore import TurnScorer, best_by_llm, candidates, user_turn_frame
from speechllm.model.speech_llm import SILENT_TEXT
from speechllm.model.whisper_decoder import DecoderArch, WhisperTextDecoder
from speechllm.weights.llm import cache_kwargs


def test_candidates_keep_each_texts_best_score_and_the_best_few():
    hyps = [("A b.", -3.0), ("A b?", -2.0), ("A b.", -1.0), ("C.", -5.0), ("D.", -4.0)]
    assert candidates(hyps, 3) == [("A b.", -1.0), ("A b?", -2.0), ("D.", -4.0)]
    assert candidates(hyps, 10)[-1] == ("C.", -5.0)


def test_best_by_llm_weighs_recognizer_and_llm_log_probabilities():
    hyps = [("heard", -1.0), ("typed", -2.0)]
    assert best_by_llm(hyps, [-10.0, -5.0], 0.0) == "heard"  # weight 0: the recognizer's ranking
    assert best_by_llm(hyps, [-10.0, -5.0], 0.5) == "typed"  # -1 - 5 < -2 - 2.5
    assert best_by_llm(hyps, [-10.0, -8.5], 0.5) == "heard"  # -6 > -6.25
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        best_by_llm(hyps, [-1.0], 1.0)
    with pytest.raises(ValueError, match=r"bridge\.rescore"):
        BridgeConfig(rescore=-0.1)


def test_word_bonus_is_added_per_word_of_each_hypothesis():
    hyps = [("Which is it?", -3.0), ("Which city is it?", -3.2)]  # 3 and 4 words
    assert best_by_llm(hyps, [-10.0, -11.0], 0.5) == "Which is it?"  # -8 > -8.7
    assert best_by_llm(hyps, [-10.0, -11.0], 0.5, word_bonus=0.5) == "Which is it?"  # -6.5 > -6.7
    assert best_by_llm(hyps, [-10.0, -11.0], 0.5, word_bonus=1.0) == "Which city is it?"  # -5 < -4.7
    with pytest.raises(ValueError, match=r"bridge\.word_bonus"):
        BridgeConfig(word_bonus=-1.0)


def _full_sequence_scores(llm, tokenizer, texts):
    """The same scores from the whole template, no cache: the reference for TurnScorer."""
    before, after = user_turn_frame(tokenizer, None)
    start = len(tokenizer(before, add_special_tokens=False).input_ids)
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer(before + text + after, add_special_tokens=False).input_ids])
        with torch.no_grad():
            logp = llm(input_ids=ids).logits[0].log_softmax(-1)  # L, V
        out.append(float(sum(logp[t - 1, ids[0, t]] for t in range(start, ids.shape[1]))))
    return out


def test_turn_scores_equal_whole_template_scores_and_the_start_runs_once(tiny_model):
    llm, tokenizer = tiny_model.llm, tiny_model.processor.tokenizer
    texts = ["What is the capital of France?", "What is the capital of power juggle?", "Hi."]
    scorer = TurnScorer(llm, tokenizer, None)
    calls = LLMCalls(tiny_model)
    try:
        got = scorer(texts)
        again = scorer(texts[:1])
    finally:
        calls.remove()
    assert got == pytest.approx(_full_sequence_scores(llm, tokenizer, texts), rel=1e-4, abs=1e-3)
    assert again[0] == pytest.approx(got[0], rel=1e-5)
    assert len(calls.calls) == 3  # the template's start once, then one batch per call
    assert scorer([]) == []


def test_token_scores_are_one_per_token_of_the_turn_and_sum_to_its_score(tiny_model):
    llm, tokenizer = tiny_model.llm, tiny_model.processor.tokenizer
    texts = ["What is the capital of France?", "Hi."]
    scorer = TurnScorer(llm, tokenizer, None)
    before, after = user_turn_frame(tokenizer, None)
    start = len(tokenizer(before, add_special_tokens=False).input_ids)
    per_token = scorer.token_scores(texts)
    for text, scores, total in zip(texts, per_token, _full_sequence_scores(llm, tokenizer, texts)):
        assert len(scores) == len(tokenizer(before + text + after, add_special_tokens=False).input_ids) - start
        assert all(s <= 0 for s in scores)
        assert sum(scores) == pytest.approx(total, rel=1e-4, abs=1e-3)


def test_a_scored_turns_state_is_the_whole_answer_prompts_run(tiny_model):
    """Each text's state holds the answer prompt on it (the user's turn and the assistant's header)
    as one forward pass over the whole template gives it: ids, keys and values, the logits and the
    final hidden state after its last position."""
    llm, tokenizer = tiny_model.llm, tiny_model.processor.tokenizer
    texts = ["What is the capital of France?", "Hi."]
    scorer = TurnScorer(llm, tokenizer, None)
    with pytest.raises(ValueError, match="no texts"):
        scorer.turn_state(0)
    scorer(texts)
    before, header = user_turn_frame(tokenizer, None, answer=True)
    assert header.startswith(user_turn_frame(tokenizer, None)[1]) and "assistant" in header
    for i, text in enumerate(texts):
        turn = scorer.turn_state(i)
        assert turn.ids == list(tokenizer(before + text + header, add_special_tokens=False).input_ids)
        cache = DynamicCache()
        with torch.no_grad():
            out = llm(input_ids=torch.tensor([turn.ids]), **cache_kwargs(llm, cache), use_cache=True,
                      output_hidden_states=True)  # fmt: skip
        assert len(turn.kv) == len(cache.layers)
        for (keys, values), layer in zip(turn.kv, cache.layers):
            assert keys.shape == layer.keys.shape and values.shape == layer.values.shape  # 1, H, L, D_head
            torch.testing.assert_close(keys, layer.keys, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(values, layer.values, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(turn.logits, out.logits[0, -1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(turn.hidden, out.hidden_states[-1][0, -1], rtol=1e-4, atol=1e-4)
    with pytest.raises(IndexError):
        scorer.turn_state(2)


def _rescoring_model(tiny_config, rescore: float, detokenize=None):
    """A tiny model whose recognizer's beam holds several distinct word sequences (`detokenize`: its
    texts; default: one word of WORDS per token)."""
    from speechllm.model import assemble
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.weights.llm import load_llm

    tiny_config.encoder.padding = "30s"
    tiny_config.bridge = BridgeConfig(mode="top1", recognizer="whisper", beam_size=4, max_tokens=3, rescore=rescore)
    encoder = load_whisper_encoder(tiny_config.encoder)
    llm, tokenizer = load_llm(tiny_config.llm)
    arch = DecoderArch(vocab_size=len(WORDS) + 3, d_model=encoder.config.d_model, n_layers=1, n_heads=4,
                       ffn_dim=64, max_positions=16, prompt=[0], eot=1, suppress=[], suppress_begin=[1],
                       specials_from=None)  # fmt: skip
    torch.manual_seed(1)
    words = detokenize or (lambda ids: " ".join(WORDS[i - 3] for i in ids if i >= 3))
    recognizer = WhisperTextDecoder(arch, detokenize=words)
    return assemble(tiny_config, encoder, llm, tokenizer, recognizer.eval()).eval(), recognizer


WORDS = ["apple", "river", "stone", "cloud", "music", "green", "table", "light"]


def test_the_prompt_on_a_rescored_transcript_runs_no_position(tiny_config, tone):
    """The rescored turn's run (the user's turn and the assistant's header, with the logits after
    them) is offered to the prompt cache: the same answer, and no prefill at all."""
    from speechllm.inference.generation import GenerationConfig, stream_generate
    from speechllm.inference.prompt_cache import PromptCache

    model, _ = _rescoring_model(tiny_config, rescore=1e6)
    conv = [{"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}]}]
    gen = GenerationConfig(max_new_tokens=5)
    with torch.no_grad():
        batch = model.prepare([conv])
        assert model.take_heard_turn() is not None and model.take_heard_turn() is None  # taken once
        plain = [int(t[0]) for t in stream_generate(model, batch, gen)]
        batch = model.prepare([conv])
        assert model._heard_turn is not None
        ids = model._heard_turn.ids
        reuse = PromptCache()
        calls = LLMCalls(model)
        try:
            reused = [int(t[0]) for t in stream_generate(model, batch, gen, reuse=reuse)]
        finally:
            calls.remove()
    assert reused == plain
    assert reuse.hits == len(ids) == batch.inputs_embeds.shape[1]  # the whole prompt
    assert [positions for _, positions, prefill in calls.calls if prefill] == []
    assert len(calls.calls) == len(plain) - 1  # one decoding step per token after the first


def test_hear_picks_the_hypothesis_the_llm_prefers(tiny_config, tone):
    """With a large weight the transcript is the LLM's favourite of the recognizer's best distinct
    hypotheses; with 0 it is Whisper's own pick."""
    model, recognizer = _rescoring_model(tiny_config, rescore=1e6)
    encoder, llm, tokenizer = model.encoder, model.llm, model.processor.tokenizer
    audio = tone(1.0)
    with torch.no_grad():
        features, lengths = model.processor.log_mel([audio])
        from speechllm.model.bridge import tidy_transcript
        from speechllm.model.transcriber import encode_windows

        states, _ = encode_windows(encoder, features, lengths)
        found = recognizer.nbest(states, beam_size=4, max_tokens=3)
        texts = [(tidy_transcript(recognizer.detokenize(ids).strip()), lp) for ids, lp in found]
        hyps = candidates(texts, model.config.bridge.candidates)
        assert len(hyps) >= 2, "the test needs a beam with distinct hypotheses"
        scores = TurnScorer(llm, tokenizer, None)([t or SILENT_TEXT for t, _ in hyps])  # as the LLM reads them
        favourite = hyps[max(range(len(hyps)), key=scores.__getitem__)][0]
        assert model.hear([audio]) == [favourite]
        model.config.bridge.rescore = 0.0
        whisper_pick = tidy_transcript(recognizer.transcribe(states, beam_size=4, max_tokens=3)[0])
        assert model.hear([audio]) == [whisper_pick]


def test_hear_adds_the_word_bonus_to_each_hypothesis(tiny_config, tone):
    """`bridge.word_bonus` reaches the pick: with a huge bonus the transcript has the most words of
    the best distinct hypotheses, the log-linear score deciding among those as long."""
    from speechllm.model.bridge import tidy_transcript
    from speechllm.model.transcriber import encode_windows

    model, recognizer = _rescoring_model(tiny_config, rescore=0.7)
    audio = tone(1.0)
    with torch.no_grad():
        recognizer.embed_tokens.weight.mul_(0.05)  # flatter next-token distributions: hypotheses of every length
        features, lengths = model.processor.log_mel([audio])
        states, _ = encode_windows(model.encoder, features, lengths)
        found = recognizer.nbest(states, beam_size=4, max_tokens=3)
        texts = [(tidy_transcript(recognizer.detokenize(ids).strip()), lp) for ids, lp in found]
        hyps = candidates(texts, model.config.bridge.candidates)
        scores = TurnScorer(model.llm, model.processor.tokenizer, None)([t or SILENT_TEXT for t, _ in hyps])
        longest = max(len(t.split()) for t, _ in hyps)
        assert min(len(t.split()) for t, _ in hyps) < longest, "the test needs hypotheses of unequal length"
        expected = max((lp + 0.7 * lm, t) for (t, lp), lm in zip(hyps, scores) if len(t.split()) == longest)[1]
        plain = max((lp + 0.7 * lm, t) for (t, lp), lm in zip(hyps, scores))[1]
        assert plain != expected, "the test needs a bonus that changes the pick"
        assert model.hear([audio]) == [plain]
        model.config.bridge.word_bonus = 1e6
        assert model.hear([audio]) == [expected]


def test_a_beam_with_one_distinct_transcript_costs_no_llm_pass(tiny_config, tone):
    model, _ = _rescoring_model(tiny_config, rescore=0.7, detokenize=lambda ids: "the same words")  # every path
    calls = LLMCalls(model)
    try:
        with torch.no_grad():
            assert model.hear([tone(1.0)]) == ["The same words"]
    finally:
        calls.remove()
    assert calls.calls == []


def test_a_confident_greedy_transcript_skips_the_beam_and_the_llm(tiny_config, tone):
    """`bridge.confidence`: a greedy transcript at least that confident (mean log-probability per
    token) is heard as is, with no LLM pass; below it, the beam and rescoring run as without it."""
    from speechllm.model.bridge import tidy_transcript
    from speechllm.model.transcriber import encode_windows, mean_log_probability

    model, recognizer = _rescoring_model(
        tiny_config, rescore=0.7, detokenize=lambda ids: " ".join(f"w{i}" for i in ids)
    )
    with torch.no_grad():
        recognizer.embed_tokens.weight.mul_(0.05)  # flatter next-token distributions: a beam of distinct texts
        features, lengths = model.processor.log_mel([tone(1.0)])
        states, _ = encode_windows(model.encoder, features, lengths)
        (ids, logp), *_ = recognizer.nbest(states, beam_size=1, max_tokens=3)
        assert ids == recognizer.greedy(states, max_tokens=3)[0]  # a beam of one is the greedy path
        mean = mean_log_probability(ids, logp)
        assert mean < -0.1, "the test needs an uncertain greedy path"
        beam = lambda hyps: "from the beam"  # noqa: E731
        for confidence, heard in [
            (mean, recognizer.detokenize(ids)),
            (mean + 1e-3, "from the beam"),
            (None, "from the beam"),
        ]:
            assert recognizer.transcribe(states, max_tokens=3, beam_size=4, choose=beam, confidence=confidence) == [
                heard
            ]
        assert recognizer.transcribe(states, max_tokens=3, beam_size=1, confidence=0.0) == [recognizer.detokenize(ids)]
        for confidence, llm_runs in [(mean, False), (mean + 1e-3, True)]:
            model.config.bridge.confidence = confidence
            calls = LLMCalls(model)
            try:
                heard = model.hear([tone(1.0)])
            finally:
                calls.remove()
            assert bool(calls.calls) == llm_runs and (model.take_heard_turn() is not None) == llm_runs
            if not llm_runs:
                assert heard == [tidy_transcript(recognizer.detokenize(ids))]
    with pytest.raises(ValueError, match=r"bridge\.confidence"):
        BridgeConfig(confidence=0.5)
