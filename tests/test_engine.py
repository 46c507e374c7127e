"""The serving engine: batching changes no answer, deltas add up, stops, limits, timeouts."""

from __future__ import annotations

import threading
import time

import pytest

from speechllm.inference.detok import IncrementalDecoder, StopMatcher
from speechllm.inference.engine import Delta, Done, Engine, QueueFull, RequestTimeout
from speechllm.inference.generation import GenerationConfig, generate
from speechllm.model import save_pretrained


def _conv(audio=None, text="Say something."):
    parts = [{"type": "text", "text": text}]
    if audio is not None:
        parts.append({"type": "audio", "audio": audio})
    return [{"role": "user", "content": parts}]


@pytest.fixture()
def engine(tiny_model):
    with Engine(tiny_model, max_batch=4, max_queue=8) as e:
        yield e


def test_batched_equals_single_and_equals_model_generate(tiny_model, tone):
    convs = [_conv(tone(1.3, seed=0)), _conv(tone(0.6, seed=1), "Hi"), _conv(None, "Only text, longer prompt.")]
    gen = GenerationConfig(max_new_tokens=12)
    expected = [generate(tiny_model, [c], GenerationConfig(max_new_tokens=12))[0] for c in convs]
    engine = Engine(tiny_model, max_batch=4, max_queue=8, start=False)
    sizes = []
    prepare = tiny_model.prepare

    def spy(conversations, **kw):
        sizes.append(len(conversations))
        return prepare(conversations, **kw)

    tiny_model.prepare = spy
    try:
        requests = [engine.submit(c, gen) for c in convs]  # all wait before the worker starts
        engine.start()
        batched = [r.result().text for r in requests]
        singles = [engine.generate([c], gen)[0] for c in convs]
    finally:
        del tiny_model.prepare
        engine.close()
    assert sizes == [3, 1, 1, 1]  # the three waiting ones are prefilled together
    assert batched == singles == expected


def test_stream_deltas_concatenate_to_the_answer(engine, tiny_model, tone):
    conv = _conv(tone())
    request = engine.submit(conv, GenerationConfig(max_new_tokens=20))
    events = list(request.events())
    deltas = [e.text for e in events if isinstance(e, Delta)]
    done = events[-1]
    assert isinstance(done, Done)
    assert all(d for d in deltas) and "".join(deltas) == done.text
    assert done.text == generate(tiny_model, [conv], GenerationConfig(max_new_tokens=20))[0]
    assert done.completion_tokens <= 20 and done.prompt_tokens > 20  # the speech positions count


def test_stop_string_cuts_the_answer(engine, tiny_model):
    conv = _conv(None, "Tell me more.")
    full = engine.generate([conv], GenerationConfig(max_new_tokens=16))[0]
    assert len(full) >= 4, "the tiny model should say a few characters"
    stop = full[2:4]
    cut = full[: full.find(stop)]
    request = engine.submit(conv, GenerationConfig(max_new_tokens=16, stop=[stop]))
    events = list(request.events())
    assert "".join(e.text for e in events if isinstance(e, Delta)) == cut
    assert events[-1] == Done(cut, "stop", events[-1].prompt_tokens, events[-1].completion_tokens)
    assert generate(tiny_model, [conv], GenerationConfig(max_new_tokens=16, stop=[stop]))[0] == cut


def test_max_tokens_gives_length(engine):
    done = engine.submit(_conv(), GenerationConfig(max_new_tokens=3)).result()
    assert done.completion_tokens <= 3
    if done.completion_tokens == 3:
        assert done.finish_reason == "length"


def test_incremental_decoder_never_splits_a_character():
    pieces = "héllo €🙂".encode()
    decoder = IncrementalDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    out = [decoder.push(b) for b in pieces]
    assert "".join(out) + decoder.flush() == "héllo €🙂"
    assert all("\ufffd" not in o for o in out)


def test_stop_matcher_holds_a_possible_prefix():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == ("abc", False)
    assert m.feed("N") == ("", False)
    assert m.feed("x") == ("ENx", False)
    assert m.feed("yEND tail") == ("y", True)


def test_queue_full_is_rejected(tiny_model):
    engine = Engine(tiny_model, max_batch=1, max_queue=2, start=False)
    engine.submit(_conv())
    engine.submit(_conv())
    with pytest.raises(QueueFull):
        engine.submit(_conv())
    engine.close()


def test_timeout_while_queued_and_while_generating(tiny_model):
    engine = Engine(tiny_model, max_batch=1, max_queue=4, start=False)
    waiting = engine.submit(_conv(), GenerationConfig(max_new_tokens=4), timeout=0.05)
    with pytest.raises(RequestTimeout):
        waiting.result()  # the caller gives up at the deadline even with no worker
    blocked = threading.Event()
    prepare = tiny_model.prepare

    def slow(conversations, **kw):
        blocked.wait(5)
        return prepare(conversations, **kw)

    tiny_model.prepare = slow
    try:
        engine.start()
        slow_request = engine.submit(_conv(), GenerationConfig(max_new_tokens=4), timeout=0.2)
        time.sleep(0.4)
        blocked.set()
        with pytest.raises(RequestTimeout):
            slow_request.result()
        assert engine.submit(_conv(), GenerationConfig(max_new_tokens=2)).result().completion_tokens <= 2
    finally:
        del tiny_model.prepare
        engine.close()


def test_bad_request_is_refused_at_submit_and_others_go_on(engine, tone):
    good = engine.submit(_conv(tone()), GenerationConfig(max_new_tokens=3))
    with pytest.raises(ValueError, match="unknown content part"):
        engine.submit([{"role": "user", "content": [{"type": "image"}]}], GenerationConfig(max_new_tokens=3))
    assert isinstance(good.result(), Done)


def test_transcribe_asks_the_llm(engine, tiny_model, tone):
    audio = tone()
    conv = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": "Transcribe the audio."}],
        }
    ]
    assert engine.transcribe([audio], max_new_tokens=8) == [
        generate(tiny_model, [conv], GenerationConfig(max_new_tokens=8))[0].strip()
    ]


def _run_cli(argv):
    import argparse

    from speechllm.cli.run import add_serve, add_transcribe

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_transcribe(sub)
    add_serve(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_transcribe_cli_files_manifest_and_output(tiny_model, tone, tmp_path, capsys):
    import json

    import soundfile as sf

    from speechllm.data.manifest import Sample, write_manifest

    ckpt = save_pretrained(tiny_model, tmp_path / "ckpt")
    for i in range(2):
        sf.write(tmp_path / f"a{i}.wav", tone(0.8, seed=i), 16000, subtype="PCM_16")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    manifest = tmp_path / "m.jsonl"
    sample = Sample(
        "s1", "asr", [str(tmp_path / "a1.wav")], [{"role": "user", "content": [{"type": "audio", "audio": 0}]}], "t"
    )
    write_manifest(manifest, [sample])
    a0, bad = str(tmp_path / "a0.wav"), str(tmp_path / "bad.wav")

    assert _run_cli(["transcribe", a0, "--model", str(ckpt), "--max-new-tokens", "4"]) == 0
    line = capsys.readouterr().out.splitlines()
    assert len(line) == 1 and line[0].startswith(a0 + "\t")

    out = tmp_path / "out.jsonl"
    argv = ["transcribe", a0, bad, str(manifest), "--model", str(ckpt), "--output", str(out), "--max-new-tokens", "4"]
    assert _run_cli(argv) == 1  # the unreadable file is reported, the others transcribed
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["audio"] for r in records] == [a0, bad, "a1.wav"]
    assert records[0]["text"] == line[0].split("\t", 1)[1] and records[1]["text"] is None and "error" in records[1]
    assert records[2]["id"] == "s1" and isinstance(records[2]["text"], str)
