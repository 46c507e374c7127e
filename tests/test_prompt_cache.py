"""Prompt reuse: a prompt sharing its start with the last one is prefilled from where they differ,
and gives the logits (and answers) it gives without the cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from conftest import LLMCalls
from speechllm.inference.engine import Engine
from speechllm.inference.generation import DecodeBatch, GenerationConfig, generate
from speechllm.inference.prompt_cache import PromptCache
from speechllm.model import build_speech_llm
from speechllm.weights.llm import cache_kwargs


def _conv(*turns: str) -> list[dict]:
    """A conversation of user turns with short assistant answers between them."""
    conv: list[dict] = []
    for i, text in enumerate(turns):
        if i:
            conv.append({"role": "assistant", "content": f"Answer {i}."})
        conv.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return conv


def _prefill(model, conv, reuse):
    batch = model.prepare([conv])
    rows = DecodeBatch(model.llm, GenerationConfig(max_new_tokens=4))
    out = rows.prefill(batch.inputs_embeds, batch.attention_mask, reuse=reuse, want_hidden=True)
    assert out is not None
    return batch, out


@pytest.fixture()
def model(tiny_config):
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config, system_prompt="You are a careful assistant who answers briefly.")
    return build_speech_llm(config).eval()


def test_shared_start_is_reused_and_changes_no_logit(model):
    cache = PromptCache()
    _prefill(model, _conv("What is the capital of France?"), cache)
    assert cache.stored > 0 and cache.hits == 0
    calls = LLMCalls(model)
    try:
        second = _conv("Name a planet.")
        batch, reused = _prefill(model, second, cache)
        _, fresh = _prefill(model, second, None)
    finally:
        calls.remove()
    length = batch.inputs_embeds.shape[1]
    shared = cache.hits
    assert 0 < shared < length - 1  # the system turn and the user header, not the question
    assert calls.calls[0] == (1, length - shared, True)  # only the new positions ran
    assert calls.calls[1] == (1, length, True)
    torch.testing.assert_close(reused.logits, fresh.logits, rtol=1e-4, atol=1e-5)
    assert reused.hidden is not None and fresh.hidden is not None
    torch.testing.assert_close(reused.hidden, fresh.hidden, rtol=1e-4, atol=1e-5)
    assert [layer.keys.shape[2] for layer in reused.cache.layers] == [length] * len(reused.cache.layers)


def test_a_later_turn_reuses_the_whole_earlier_prompt(model):
    cache = PromptCache()
    first, _ = _prefill(model, _conv("Hello there."), cache)
    _prefill(model, _conv("Hello there.", "And then?"), cache)
    # the earlier prompt ends with the assistant header; the next one carries the answer there instead
    assert cache.hits >= first.inputs_embeds.shape[1] - 4


def test_the_last_position_always_runs(model):
    cache = PromptCache()
    conv = _conv("Same question.")
    batch, _ = _prefill(model, conv, cache)
    calls = LLMCalls(model)
    try:
        _prefill(model, conv, cache)
    finally:
        calls.remove()
    assert cache.hits == batch.inputs_embeds.shape[1] - 1
    assert calls.calls == [(1, 1, True)]


def test_padded_groups_and_prefix_lm_masks_are_neither_reused_nor_stored(model):
    cache = PromptCache()
    batch = model.prepare([_conv("A short one."), _conv("A longer question than the other one.")], left_pad=True)
    rows = DecodeBatch(model.llm, GenerationConfig(max_new_tokens=4))
    rows.prefill(batch.inputs_embeds, batch.attention_mask, reuse=cache)
    assert cache.stored == 0
    one = model.prepare([_conv("A short one.")])
    full = torch.ones(1, 1, one.inputs_embeds.shape[1], one.inputs_embeds.shape[1], dtype=torch.bool)
    rows.prefill(one.inputs_embeds, one.attention_mask, full_mask=full, reuse=cache)
    assert cache.stored == 0
    assert not PromptCache.usable(batch.attention_mask, None)
    assert PromptCache.usable(one.attention_mask, None) and not PromptCache.usable(one.attention_mask, full)


def test_a_prompt_over_the_limit_clears_the_cache(model):
    cache = PromptCache(max_positions=8)
    _prefill(model, _conv("Anything at all, longer than eight positions."), cache)
    assert cache.stored == 0
    with pytest.raises(ValueError, match="max_positions"):
        PromptCache(max_positions=0)


def test_engine_answers_are_unchanged_and_later_requests_prefill_less(model):
    gen = GenerationConfig(max_new_tokens=8)
    convs = [_conv("What is two plus two?"), _conv("Name a colour."), _conv("Name a colour.")]
    expected = [generate(model, [c], gen)[0] for c in convs]
    calls = LLMCalls(model)
    try:
        with Engine(model, max_batch=1) as engine:
            answers = [engine.generate([c], gen)[0] for c in convs]
            assert engine.prompt_cache is not None and engine.prompt_cache.hits > 0
    finally:
        calls.remove()
    assert answers == expected
    prefills = [positions for _, positions, prefill in calls.calls if prefill]
    lengths = [model.prepare([c]).inputs_embeds.shape[1] for c in convs]
    assert prefills[0] == lengths[0] and prefills[1] < lengths[1] and prefills[2] == 1


def test_an_offered_piece_serves_the_next_lookup_only_and_only_where_it_shares_more():
    torch.manual_seed(0)
    embeds = torch.randn(1, 9, 4)  # the prompt: 1, L, D
    stored_kv = [(torch.randn(1, 2, 9, 3), torch.randn(1, 2, 9, 3))]
    cache = PromptCache()
    cache.store(torch.cat([embeds[:, :3], torch.randn(1, 6, 4)], dim=1), DynamicCache(ddp_cache_data=stored_kv))
    assert cache.common(embeds) == 3
    offered_kv = [(torch.randn(1, 2, 6, 3), torch.randn(1, 2, 6, 3))]
    cache.offer(embeds[0, :6], offered_kv)  # shares 6 positions with the prompt: more than the stored 3
    got, n, logits, _ = cache.lookup(embeds)
    assert n == 6 and torch.equal(got.layers[0].keys, offered_kv[0][0]) and logits is None
    got, n, _, _ = cache.lookup(embeds)  # dropped after one lookup: the stored prompt again
    assert n == 3 and torch.equal(got.layers[0].keys, stored_kv[0][0][:, :, :3])
    cache.offer(torch.randn(6, 4), offered_kv)  # shares nothing: the stored prompt serves
    assert cache.lookup(embeds)[1] == 3
    with pytest.raises(ValueError, match="6 positions"):
        cache.offer(embeds[0, :6], [(torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3))])


def test_an_offered_piece_with_its_outputs_serves_the_whole_prompt():
    """A piece that is the whole prompt and brings the logits (and hidden state) after it leaves no
    position to run; without them, or without the hidden state a caller wants, the last position runs."""
    torch.manual_seed(0)
    embeds = torch.randn(1, 5, 4)
    kv = [(torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3))]
    logits, hidden = torch.randn(7), torch.randn(4)
    cache = PromptCache()
    cache.offer(embeds[0], kv, logits, hidden)
    got = cache.lookup(embeds, want_hidden=True)
    assert got.positions == 5 and torch.equal(got.logits, logits[None]) and torch.equal(got.hidden, hidden[None])
    assert torch.equal(got.cache.layers[0].keys, kv[0][0])
    cache.offer(embeds[0], kv, logits)  # no hidden state: a caller that wants one runs the last position
    assert cache.lookup(embeds, want_hidden=True).positions == 4
    cache.offer(embeds[0], kv, logits)
    got = cache.lookup(embeds)
    assert got.positions == 5 and got.hidden is None
    cache.offer(embeds[0], kv)  # no outputs: the last position runs
    assert cache.lookup(embeds).positions == 4
    longer = torch.cat([embeds, torch.randn(1, 2, 4)], dim=1)
    cache.offer(embeds[0], kv, logits, hidden)  # a prompt that goes on past the piece runs the rest
    got = cache.lookup(longer, want_hidden=True)
    assert got.positions == 5 and got.logits is None


def test_a_prompt_served_whole_by_a_piece_decodes_as_one_prefilled(tiny_model):
    """Prefill from a piece with its outputs gives the same tokens as prefilling the prompt."""
    from speechllm.inference.generation import GenerationConfig, generate_tokens

    llm = tiny_model.llm
    torch.manual_seed(2)
    ids = torch.randint(0, 200, (1, 9))
    embeds = llm.get_input_embeddings()(ids).detach()
    gen = GenerationConfig(max_new_tokens=6)
    with torch.no_grad():
        plain = [int(t[0]) for t in generate_tokens(llm, embeds, torch.ones_like(ids), gen, eos=set(), pad_id=0)]
        cache = DynamicCache()
        out = llm(inputs_embeds=embeds, **cache_kwargs(llm, cache), use_cache=True, output_hidden_states=True)
        reuse = PromptCache()
        reuse.offer(embeds[0], [(layer.keys, layer.values) for layer in cache.layers], out.logits[0, -1],
                    out.hidden_states[-1][0, -1])  # fmt: skip
        served = [int(t[0]) for t in generate_tokens(llm, embeds, torch.ones_like(ids), gen, eos=set(), pad_id=0,
                                                     reuse=reuse)]  # fmt: skip
    assert served == plain and reuse.hits == 9
