"""The engine under load and abuse: continuous batching changes no answer, over-long prompts are
refused at once, cancelled / expired requests stop and free their slot, close() never hangs,
sampling with top_p and seeds."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import LLMCalls
from conftest import wait_until as _wait
from speechllm.inference.engine import Done, Engine, EngineClosed, PromptTooLong, RequestTimeout
from speechllm.inference.generation import DecodeBatch, GenerationConfig, pick_tokens


def _conv(text: str, audio=None):
    parts = [{"type": "text", "text": text}]
    if audio is not None:
        parts.insert(0, {"type": "audio", "audio": audio})
    return [{"role": "user", "content": parts}]


# ---------------------------------------------------------------------- continuous batching


def test_continuous_batching_gives_each_request_its_answer_alone(tiny_model, tone):
    convs = [
        _conv("A first question, rather long, so its prompt spans several chunks of eight."),
        _conv("Hi"),
        _conv("What is in this sound?", tone(0.7, seed=1)),
        _conv("Short one."),
    ]
    gens = [GenerationConfig(max_new_tokens=n) for n in (40, 12, 20, 6)]
    with Engine(tiny_model, max_batch=1, prefill_chunk=8) as alone_engine:
        alone = [alone_engine.submit(c, g).result().text for c, g in zip(convs, gens)]

    engine = Engine(tiny_model, max_batch=4, prefill_chunk=8, start=False)
    late: list = []

    def arrive(n: int) -> None:  # requests 1..3 arrive while earlier ones decode (on calls 10, 14, 25)
        if n in (10, 14, 25):
            i = len(late) + 1
            late.append(engine.submit(convs[i], gens[i]))

    calls = LLMCalls(tiny_model, on_call=arrive)
    try:
        first = engine.submit(convs[0], gens[0])
        engine.start()
        texts = [first.result().text] + [r.result().text for r in _wait_for(late, 3)]
    finally:
        calls.remove()
        engine.close()
    assert texts == alone
    rows = calls.decode_rows()
    assert max(rows) >= 3, f"the late requests should have joined the running batch, saw batch sizes {set(rows)}"


def _wait_for(items: list, n: int) -> list:
    _wait(lambda: len(items) >= n)
    return items


def test_joined_rows_are_exact_on_the_decode_batch(tiny_model):
    """Rows prefilled apart and joined (different widths, chunked) decode as each would alone."""
    prompts = ["a much longer prompt than the other one", "short"]
    batches = [tiny_model.prepare([_conv(p)]) for p in prompts]
    gen = GenerationConfig(max_new_tokens=6)
    alone = []
    for b in batches:
        d = DecodeBatch(tiny_model.llm, gen, chunk=5)
        d.join(d.prefill(b.inputs_embeds, b.attention_mask))
        out = []
        for _ in range(6):
            t = d.pick()
            out.append(int(t[0]))
            d.advance(t, torch.ones(1, dtype=torch.bool))
        alone.append(out)
    d = DecodeBatch(tiny_model.llm, gen, chunk=3)
    for b in batches:
        d.join(d.prefill(b.inputs_embeds, b.attention_mask))
    together: list[list[int]] = [[], []]
    for _ in range(6):
        t = d.pick()
        for i in range(2):
            together[i].append(int(t[i]))
        d.advance(t, torch.ones(2, dtype=torch.bool))
    assert together == alone
    assert d.state is not None and d.state.mask.shape == (2, batches[0].attention_mask.shape[1] + 6)


# ---------------------------------------------------------------------- prompts too long


def test_a_60000_word_prompt_is_refused_at_once_naming_both_lengths(tiny_model):
    engine = Engine(tiny_model, start=False)
    words = " ".join(["lorem", "ipsum", "dolor"] * 20_000)
    t0 = time.perf_counter()
    with pytest.raises(PromptTooLong) as e:
        engine.submit(_conv(words), GenerationConfig(max_new_tokens=16))
    took = time.perf_counter() - t0
    assert took < 0.5, f"the check should cost milliseconds, took {took:.3f} s"
    assert "at least" in str(e.value) and "1024" in str(e.value) and "16 new tokens" in str(e.value)
    assert engine.queued == 0


def test_prompt_plus_max_tokens_over_the_context_is_refused_with_the_exact_count(tiny_model):
    engine = Engine(tiny_model, start=False)
    conv = _conv("x" * 600)
    positions = len(tiny_model.prepare([conv]).input_ids[0])
    engine.submit(conv, GenerationConfig(max_new_tokens=1024 - positions))  # just fits
    with pytest.raises(PromptTooLong, match=f"takes {positions} positions .* up to {1025 - positions} new"):
        engine.submit(conv, GenerationConfig(max_new_tokens=1025 - positions))
    engine.close()


def test_audio_positions_bound_is_exact_for_stack_and_refuses_long_audio(tiny_model, tone):
    engine = Engine(tiny_model, start=False)
    audio = tone(1.3)
    batch = tiny_model.prepare([_conv("", audio)])
    n_speech = int((batch.input_ids == tiny_model.processor.speech_token_id).sum())
    assert engine.budget.speech_positions(audio) == n_speech
    per_second = engine.budget.speech_positions(np.zeros(16000 * 10, np.float32)) / 10
    too_long = np.zeros(int(16000 * (1100 / per_second)), np.float32)  # > 1024 positions of speech
    t0 = time.perf_counter()
    with pytest.raises(PromptTooLong, match="1024"):
        engine.submit(_conv("What is this?", too_long))
    assert time.perf_counter() - t0 < 0.5
    engine.close()


# ---------------------------------------------------------------------- cancel, deadline, close


def test_cancelled_request_stops_at_the_next_step_and_frees_its_slot(tiny_model):
    calls = LLMCalls(tiny_model, delay=0.01)
    try:
        with Engine(tiny_model, max_batch=1) as engine:
            long = engine.submit(_conv("Go on and on."), GenerationConfig(max_new_tokens=500))
            _wait(lambda: len(calls.calls) >= 5)
            long.cancel()
            _wait(lambda: engine.running == 0, 2.0)
            n = len(calls.calls)
            assert n < 50, f"the cancelled request went on for {n} LLM calls"
            t0 = time.monotonic()
            done = engine.submit(_conv("Hi"), GenerationConfig(max_new_tokens=3)).result()
            assert isinstance(done, Done) and time.monotonic() - t0 < 2.0
    finally:
        calls.remove()


def test_deadline_stops_decoding_and_a_long_prefill_between_chunks(tiny_model):
    calls = LLMCalls(tiny_model, delay=0.02)
    try:
        with Engine(tiny_model, max_batch=2, prefill_chunk=8) as engine:
            decoding = engine.submit(_conv("Hi"), GenerationConfig(max_new_tokens=500), timeout=0.3)
            with pytest.raises(RequestTimeout):
                decoding.result()
            _wait(lambda: engine.running == 0, 2.0)
            assert len(calls.decode_rows()) < 40, "decoding should stop at the deadline (~15 steps)"

            calls.calls.clear()
            prompt = _conv("y" * 600)  # ~620 positions: 78 chunks of 8, 1.6 s of prefill at 20 ms each
            prefilling = engine.submit(prompt, GenerationConfig(max_new_tokens=4), timeout=0.2)
            with pytest.raises(RequestTimeout):
                prefilling.result()
            time.sleep(0.3)
            prefills = [c for c in calls.calls if c[2]]
            assert 0 < len(prefills) < 40 and not calls.decode_rows(), f"{len(prefills)} prefill chunks ran"
            assert engine.submit(_conv("Hi"), GenerationConfig(max_new_tokens=2)).result().completion_tokens <= 2
    finally:
        calls.remove()


def test_close_rejects_waiting_requests_and_never_hangs(tiny_model):
    calls = LLMCalls(tiny_model, delay=0.02)
    engine = Engine(tiny_model, max_batch=1, max_queue=8)
    try:
        running = engine.submit(_conv("Go on."), GenerationConfig(max_new_tokens=800))
        _wait(lambda: engine.running == 1)
        waiting = [engine.submit(_conv(f"q{i}"), GenerationConfig(max_new_tokens=4)) for i in range(3)]
        t0 = time.monotonic()
        engine.close(timeout=0.3)
        took = time.monotonic() - t0
        assert took < 2.0, f"close took {took:.2f} s"
        for r in waiting:
            with pytest.raises(EngineClosed):
                r.result()
        with pytest.raises(EngineClosed):
            running.result()  # 800 steps at 20 ms would take 16 s: it was stopped after the grace time
        with pytest.raises(EngineClosed):
            engine.submit(_conv("late"))
    finally:
        calls.remove()


def test_close_drains_a_short_running_request(tiny_model):
    with Engine(tiny_model, max_batch=1) as engine:
        running = engine.submit(_conv("Hi"), GenerationConfig(max_new_tokens=5))
        _wait(lambda: engine.running == 1 or running.finished)
        engine.close(timeout=10)
        assert isinstance(running.result(), Done)


# ---------------------------------------------------------------------- sampling


def test_top_p_samples_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.55, 0.30, 0.10, 0.05]])).repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    nucleus = GenerationConfig(do_sample=True, top_p=0.5)
    assert set(pick_tokens(logits, nucleus, g).tolist()) == {0}  # 0.55 alone reaches 0.5
    two = pick_tokens(logits, GenerationConfig(do_sample=True, top_p=0.8), g).tolist()
    assert set(two) == {0, 1}  # 0.55 + 0.30 reach 0.8; 2 and 3 never drawn
    share = two.count(0) / len(two)
    assert abs(share - 0.55 / 0.85) < 0.1, f"renormalized nucleus: expected ~0.65 of token 0, got {share:.2f}"
    everything = set(pick_tokens(logits, GenerationConfig(do_sample=True), g).tolist())
    assert everything == {0, 1, 2, 3}


def test_top_p_sampling_in_the_engine_is_reproducible_with_a_seed(tiny_model):
    gen = GenerationConfig(max_new_tokens=12, do_sample=True, top_p=0.7, temperature=1.5, seed=7)
    with Engine(tiny_model) as engine:
        a, b = (engine.submit(_conv("Say something."), gen).result().text for _ in range(2))
        c = engine.submit(_conv("Say something."), GenerationConfig(**{**gen.__dict__, "seed": 8})).result().text
    assert a == b and a != c


def test_seeded_requests_run_alone(tiny_model):
    gen = GenerationConfig(max_new_tokens=8, do_sample=True, seed=3)
    engine = Engine(tiny_model, max_batch=4, start=False)
    calls = LLMCalls(tiny_model)
    try:
        requests = [engine.submit(_conv("Say something."), gen) for _ in range(3)]
        engine.start()  # all three wait before the worker starts, and still run one by one
        texts = [r.result().text for r in requests]
    finally:
        calls.remove()
        engine.close()
    assert set(calls.decode_rows()) == {1}
    assert texts[0] == texts[1] == texts[2]


def test_a_request_that_cannot_join_is_not_overtaken(tiny_model):
    """A sampling request waits behind a running greedy batch; a greedy one behind it does not join first."""
    engine = Engine(tiny_model, max_batch=4, start=False)
    greedy = GenerationConfig(max_new_tokens=4)
    sampled = GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.7)
    late: list = []

    def arrive(n: int) -> None:
        if n == 5:
            late.extend([engine.submit(_conv("sampled"), sampled), engine.submit(_conv("greedy"), greedy)])

    calls = LLMCalls(tiny_model, on_call=arrive)
    try:
        first = engine.submit(_conv("Go on."), GenerationConfig(max_new_tokens=30))
        engine.start()
        first.result()
        for r in _wait_for(late, 2):
            r.result()
    finally:
        calls.remove()
        engine.close()
    assert set(calls.decode_rows()) == {1}, "the greedy request must not overtake the sampling one"
