"""The recognizer run by CTranslate2 (`bridge.engine: ctranslate2`): the same hypotheses, scores and
greedy transcripts as our PyTorch decoder on the same checkpoint, its length limit, a checkpoint split
in parts, and the errors it names."""

from __future__ import annotations

import shutil

import pytest
import torch

from speechllm.config import BridgeConfig
from speechllm.model.ct2_decoder import load_ct2_decoder  # imports ctranslate2 only when loading
from speechllm.model.whisper_decoder import load_whisper_decoder
from speechllm.weights.errors import WeightsError

pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """The conftest's tiny Whisper with peaked logits (see `convert_tiny_whisper`)."""
    from conftest import convert_tiny_whisper

    return convert_tiny_whisper(tmp_path_factory.mktemp("peaked"), decoder_scale=10.0)


def _states(seed: int) -> torch.Tensor:
    return torch.randn(1, 1500, 64, generator=torch.Generator().manual_seed(seed))  # 1, S, D


def test_beam_search_and_greedy_match_the_torch_decoder(peaked):
    source = str(peaked["float32"])
    ours, ct2 = load_whisper_decoder(source, "float32", "exact"), load_ct2_decoder(source, "float32", threads=1)
    assert ct2.prompt == ours.arch.prompt
    for seed in range(3):
        states = _states(seed)
        theirs = ct2.nbest(states, beam_size=3, max_tokens=12)
        mine = sorted(ours.nbest(states, beam_size=3, max_tokens=12), key=lambda h: -h[1])[:3]
        assert [ids for ids, _ in theirs] == [ids for ids, _ in mine]
        for (_, a), (_, b) in zip(theirs, mine):
            assert a == pytest.approx(b, abs=2e-2)  # summed log-probabilities, summed alike
        assert ct2.greedy(states, None, 12) == ours.greedy(states, None, 12)
        assert ct2.transcribe(states, max_tokens=12, beam_size=3) == ours.transcribe(states, max_tokens=12, beam_size=3)


def test_max_tokens_is_the_number_of_tokens_written(peaked):
    ct2 = load_ct2_decoder(str(peaked["float32"]), "float32", threads=1)
    eot_never = _states(0)  # this model's beams never end within the limits below
    for limit in (1, 5, 20):
        assert {len(ids) for ids, _ in ct2.nbest(eot_never, beam_size=2, max_tokens=limit)} == {limit}
        assert [len(ids) for ids in ct2.greedy(eot_never, None, limit)] == [limit]


def test_token_log_probabilities_sum_to_the_greedy_score(peaked):
    ct2 = load_ct2_decoder(str(peaked["float32"]), "float32", threads=1)
    for seed, limit in ((0, 5), (1, 12), (2, 12)):
        ids, logps = ct2.token_log_probabilities(_states(seed), limit)
        ((greedy, score),) = ct2.nbest(_states(seed), 1, limit)
        assert ids == greedy and sum(logps) == pytest.approx(score, abs=1e-3)
        assert len(logps) == len(ids) + (len(ids) < limit) and all(lp <= 0 for lp in logps)  # end of text last


def test_never_writes_a_special_or_suppressed_token(peaked):
    ct2 = load_ct2_decoder(str(peaked["float32"]), "float32", threads=1)
    tokens = {t for seed in range(4) for ids, _ in ct2.nbest(_states(seed), 4, 12) for t in ids}
    assert tokens and max(tokens) < ct2.prompt[0]  # no id from <|startoftranscript|> on
    assert 1 not in tokens  # the checkpoint's suppress_ids ("w1", see convert_tiny_whisper)


def test_a_checkpoint_split_in_parts_loads_from_memory(peaked, tmp_path):
    source = peaked["float32"]
    data = (source / "model.bin").read_bytes()
    split = tmp_path / "split"
    split.mkdir()
    (split / "model.bin.part1").write_bytes(data[: len(data) // 2])
    (split / "model.bin.part2").write_bytes(data[len(data) // 2 :])
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        shutil.copy(source / name, split / name)
    whole, parts = load_ct2_decoder(str(source), "float32", 1), load_ct2_decoder(str(split), "float32", 1)
    assert parts.nbest(_states(1), 3, 8) == whole.nbest(_states(1), 3, 8)


def test_int8_reads_the_same_states(peaked):
    states = _states(2)
    exact = load_ct2_decoder(str(peaked["float32"]), "float32", threads=1).greedy(states, None, 6)
    assert load_ct2_decoder(str(peaked["float32"]), "int8", threads=1).greedy(states, None, 6) == exact


def test_errors_name_what_was_wrong(peaked, tiny_whisper_dir):
    ct2 = load_ct2_decoder(str(peaked["float32"]), "float32", threads=1)
    with pytest.raises(ValueError, match="lengths must be None"):
        ct2.greedy(_states(0), torch.tensor([100]), 4)
    with pytest.raises(ValueError, match="one sample at a time"):
        ct2.nbest(torch.randn(2, 1500, 64), 2, 4)
    with pytest.raises(ValueError, match="max_tokens"):
        ct2.greedy(_states(0), None, 0)
    with pytest.raises(ValueError, match=r"bridge\.compute_type"):
        load_ct2_decoder(str(peaked["float32"]), "int4")
    with pytest.raises(WeightsError, match=r"bridge\.engine 'ctranslate2' needs a CTranslate2 checkpoint"):
        load_ct2_decoder(str(tiny_whisper_dir))  # a Hugging Face directory
    with pytest.raises(ValueError, match=r"bridge\.engine"):
        BridgeConfig(engine="onnx")


def test_the_engine_picks_the_recognizer(peaked):
    from speechllm.config import EncoderConfig, SpeechLLMConfig
    from speechllm.model.builders import load_recognizer
    from speechllm.model.ct2_decoder import CT2TextDecoder
    from speechllm.model.whisper_decoder import WhisperTextDecoder

    def config(engine: str) -> SpeechLLMConfig:
        return SpeechLLMConfig(
            encoder=EncoderConfig(source=str(peaked["int8"]), padding="30s"),
            bridge=BridgeConfig(mode="top1", recognizer="whisper", engine=engine),
        )

    assert isinstance(load_recognizer(config("ctranslate2")), CT2TextDecoder)
    assert isinstance(load_recognizer(config("torch")), WhisperTextDecoder)


def test_loading_leaves_torch_its_threads_and_the_recognizer_gets_its_own(peaked, monkeypatch):
    """CTranslate2 sets the process's OpenMP threads to the model's count when it loads; torch's are
    given back, and `bridge.threads` reaches the decoder (None: torch's count)."""
    from speechllm.config import EncoderConfig, SpeechLLMConfig
    from speechllm.model import ct2_decoder
    from speechllm.model.builders import load_recognizer

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        load_ct2_decoder(str(peaked["float32"]), "float32", threads=1)
        assert torch.get_num_threads() == 2
        seen = []
        monkeypatch.setattr(ct2_decoder, "load_ct2_decoder", lambda *args, **kw: seen.append(args[2]))
        for threads in (1, 3, None):
            load_recognizer(SpeechLLMConfig(
                encoder=EncoderConfig(source=str(peaked["int8"]), padding="30s"),
                bridge=BridgeConfig(mode="top1", recognizer="whisper", engine="ctranslate2", threads=threads),
            ))  # fmt: skip
        assert seen == [1, 3, None]
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=r"bridge\.threads must be > 0"):
        BridgeConfig(threads=0)


def test_auto_threads_keep_the_count_whose_probe_ran_sooner(peaked, monkeypatch):
    """`bridge.threads: auto` times the same probe beam search on one thread and on torch's count and
    keeps the faster model; with torch on one thread there is nothing to choose."""
    from speechllm.model import ct2_decoder

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one, two = (load_ct2_decoder(str(peaked["float32"]), "float32", n) for n in (1, 2))
        assert (one.threads, two.threads) == (1, 2)
        real = ct2_decoder.probe_seconds({1: one, 2: two})
        assert set(real) == {1, 2} and all(0 < s < 60 for s in real.values())
        one.eot = None
        with pytest.raises(ValueError, match="know their end of text"):
            ct2_decoder.probe_seconds({1: one})
        for faster in (1, 2):
            times = lambda models, *a, f=faster: {n: float(n != f) for n in models}  # noqa: E731
            monkeypatch.setattr(ct2_decoder, "probe_seconds", times)
            chosen = load_ct2_decoder(str(peaked["float32"]), "float32", "auto")
            assert chosen.threads == faster and chosen.probe == {n: float(n != faster) for n in (1, 2)}
            assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        monkeypatch.setattr(ct2_decoder, "probe_seconds", lambda *a: pytest.fail("one count: no probe"))
        alone = load_ct2_decoder(str(peaked["float32"]), "float32", "auto")
        assert alone.threads == 1 and alone.probe is None
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=r"bridge\.threads must be a count, 'auto' or null, got 'fast'"):
        BridgeConfig(threads="fast")
    with pytest.raises(ValueError, match=r"bridge\.threads must be a count, 'auto' or null, got 'fast'"):
        load_ct2_decoder(str(peaked["float32"]), "float32", "fast")
