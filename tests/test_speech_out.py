"""Speech output: units, the CTC speech decoder, streaming, and the LLM states the decoder reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechllm.speech_out.config import SpeechDecoderConfig, UnitsConfig, VocoderConfig
from speechllm.speech_out.decoder import SpeechDecoder
from speechllm.speech_out.units import UnitExtractor

K = 10


def tiny_decoder(llm_dim: int = 16, **kw) -> SpeechDecoder:
    torch.manual_seed(0)
    base = dict(llm_dim=llm_dim, num_units=K, upsample=4, layers=2, dim=32, heads=2, ffn_dim=64, window=7)
    return SpeechDecoder(SpeechDecoderConfig(**{**base, **kw})).eval()


def test_smoothed_labels_are_the_cheapest_path():
    import itertools

    from speechllm.speech_out.units import smooth_labels

    rng = np.random.default_rng(0)
    costs = rng.random((6, 3)) * 4
    for penalty in (0.0, 0.7, 2.5, 100.0):

        def total(path, penalty=penalty):
            return costs[np.arange(6), path].sum() + penalty * sum(a != b for a, b in itertools.pairwise(path))

        best = min(total(p) for p in itertools.product(range(3), repeat=6))
        assert total(smooth_labels(costs, penalty)) == pytest.approx(best)
    assert smooth_labels(costs, 0.0) == costs.argmin(1).tolist()
    assert smooth_labels(costs, 100.0) == [int(costs.sum(0).argmin())] * 6  # one label throughout
    assert smooth_labels(np.zeros((0, 3)), 1.0) == []
    with pytest.raises(ValueError, match="switch_penalty"):
        UnitsConfig(switch_penalty=-1.0)


def test_unit_extractor_fit_extract_and_reload(tiny_whisper_dir, tone, tmp_path):
    from speechllm.config import EncoderConfig
    from speechllm.model.encoder import load_whisper_encoder

    config = UnitsConfig(encoder=str(tiny_whisper_dir), layer=1, k=4)
    encoder = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), layer=1))
    extractor = UnitExtractor(config, encoder)
    audios = [tone(1.0, seed=i) for i in range(3)]
    stats = extractor.fit(audios, progress=False)
    assert stats["frames"] == 3 * 50  # 1 s at 50 frames a second, three times
    units = extractor.extract([tone(0.6, seed=9)])
    assert len(units[0]) == 30 and all(0 <= u < 4 for u in units[0])
    extractor.save(tmp_path / "units")
    again = UnitExtractor.load(tmp_path / "units", encoder)
    assert again.extract([tone(0.6, seed=9)]) == units
    assert json.loads((tmp_path / "units" / "units.json").read_text())["k"] == 4
    again.config = UnitsConfig(encoder=str(tiny_whisper_dir), layer=1, k=4, switch_penalty=1e9)
    (smoothed,) = again.extract([tone(0.6, seed=9)])
    assert len(smoothed) == 30 and len(set(smoothed)) == 1  # a huge penalty keeps one unit


def test_unit_extractor_rejects_wrong_layer_and_unfitted(tiny_whisper_dir):
    from speechllm.config import EncoderConfig
    from speechllm.model.encoder import load_whisper_encoder

    encoder = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), layer=2))
    with pytest.raises(ValueError, match=r"layer 2.*layer 1"):
        UnitExtractor(UnitsConfig(layer=1), encoder)
    with pytest.raises(ValueError, match="no centroids"):
        UnitExtractor(UnitsConfig(layer=2), encoder).assign(np.zeros((3, 64), np.float32))


def test_decoder_shapes_and_ctc_loss_trains():
    dec = tiny_decoder().train()
    hidden, embeds = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    log_probs, lengths = dec(hidden, embeds, torch.tensor([5, 3]))
    assert log_probs.shape == (2, 20, K + 1) and lengths.tolist() == [20, 12]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 20), atol=1e-5)
    units = [[1, 2, 3, 2, 5, 6], [4, 4, 4]]
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = dec.ctc_loss(hidden, embeds, torch.tensor([5, 3]), units)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_decoder_rejects_too_many_units_and_wrong_width():
    dec = tiny_decoder()
    with pytest.raises(ValueError, match=r"9 units for 2 tokens.*upsample=4"):
        dec.ctc_loss(torch.randn(1, 2, 16), torch.randn(1, 2, 16), torch.tensor([2]), [list(range(9))])
    with pytest.raises(ValueError, match="width 16, got 8"):
        dec(torch.randn(1, 2, 8), torch.randn(1, 2, 8), torch.tensor([2]))
    with pytest.raises(ValueError, match="divisible"):
        SpeechDecoderConfig(dim=30, heads=4)


def test_answers_over_the_upsample_are_refused_or_dropped():
    from speechllm.speech_out.train_decoder import check_upsample, drop_over_upsample

    items = [
        {"hidden": torch.zeros(tokens, 4), "units": list(range(units))} for tokens, units in ((2, 8), (2, 9), (3, 3))
    ]
    with pytest.raises(ValueError, match=r"4.5 units per token but upsample=4"):
        check_upsample(items, 4)
    kept = drop_over_upsample(items, 4)
    assert [len(it["units"]) for it in kept] == [8, 3] and check_upsample(kept, 4) == pytest.approx(2.5)
    with pytest.raises(ValueError, match=r"raise upsample \(--upsample\)"):
        drop_over_upsample(items[1:2], 4)


def test_incremental_decoding_equals_offline_beyond_the_window():
    dec = tiny_decoder()
    n = 9  # 36 positions, far beyond the 7-position window
    hidden, embeds = torch.randn(n, 16), torch.randn(n, 16)
    offline, _ = dec(hidden[None], embeds[None], torch.tensor([n]))
    state = dec.state()
    streamed = []
    for i in range(n):
        state.push(hidden[i], embeds[i])
        streamed.append(state.cache[0][0].shape[2])
    assert max(streamed) == dec.config.window - 1  # the cache never grows past the window
    assert state.units == dec.decode(hidden, embeds)
    # Same log-probabilities position by position, not just the same argmax.
    state2, rows = dec.state(), []
    for i in range(n):
        state2.push(hidden[i], embeds[i])
        rows.append(state2.log_probs)
    assert torch.allclose(torch.cat(rows), offline[0], atol=1e-5)
    assert offline.shape == (1, n * 4, K + 1)


def test_answer_states_match_generation(tiny_model):
    """The states the decoder trains on (teacher forcing) are the ones generation hands it."""
    from speechllm.inference.generation import GenerationConfig, eos_token_ids, stream_generate
    from speechllm.speech_out.answers import answer_states

    conversation = [{"role": "user", "content": "hello there"}]
    batch = tiny_model.prepare([conversation])
    states, tokens = [], []
    for token in stream_generate(tiny_model, batch, GenerationConfig(max_new_tokens=6), states.append):
        if int(token[0]) in eos_token_ids(tiny_model):
            break
        tokens.append(int(token[0]))
    answer = tiny_model.processor.decode(tokens)
    ((hidden, ids, embeds),) = answer_states(tiny_model, ["hello there"], [answer], progress=False)
    assert ids.tolist() == tokens
    assert torch.allclose(hidden.float(), torch.cat(states[: len(tokens)]).float(), atol=1e-2)
    assert torch.allclose(embeds.float(), tiny_model.llm.get_input_embeddings()(ids).float(), atol=1e-2)


def test_speech_stream_equals_offline_synthesis_for_any_chunking(tiny_model):
    from speechllm.speech_out.streaming import SpeechOutput, StreamingConfig
    from speechllm.speech_out.vocoder import UnitVocoder

    torch.manual_seed(3)
    vocoder = UnitVocoder(VocoderConfig(num_units=K, dim=32, blocks=2, n_fft=640)).eval()
    decoder = tiny_decoder(llm_dim=64)
    n = 12
    hidden, tokens = torch.randn(n, 64), torch.randint(5, 200, (n,))
    table = tiny_model.llm.get_input_embeddings()
    for first, every in [(1, 1), (3, 5), (100, 100)]:
        speech = SpeechOutput(decoder, vocoder, table, StreamingConfig(first_chunk_units=first, chunk_units=every))
        offline = speech.synthesize(hidden, tokens)
        stream = speech.stream()
        pieces = [stream.push(hidden[i], int(tokens[i])) for i in range(n)] + [stream.finish()]
        streamed = np.concatenate(pieces)
        assert streamed.dtype == np.float32 and len(streamed) == len(offline) > 0
        assert np.allclose(streamed, offline, atol=1e-4)
        assert stream.units == speech.units(hidden, tokens)
    with pytest.raises(ValueError, match="push after finish"):
        stream.push(hidden[0], 5)


def test_speech_output_save_load_round_trip(tiny_model, tmp_path):
    from speechllm.speech_out.streaming import SpeechOutput, load_speech_output
    from speechllm.speech_out.vocoder import UnitVocoder

    torch.manual_seed(4)
    vocoder = UnitVocoder(VocoderConfig(num_units=K, dim=32, blocks=1, n_fft=640)).eval()
    speech = SpeechOutput(tiny_decoder(llm_dim=64), vocoder, tiny_model.llm.get_input_embeddings())
    speech.save(tmp_path / "speech")
    again = load_speech_output(tmp_path / "speech", tiny_model.llm)
    hidden, tokens = torch.randn(5, 64), torch.randint(5, 200, (5,))
    assert np.array_equal(again.synthesize(hidden, tokens), speech.synthesize(hidden, tokens))
    with pytest.raises(ValueError, match="12 units, vocoder reads 10"):
        SpeechOutput(tiny_decoder(llm_dim=64, num_units=12), vocoder, None)


def test_pack_stores_float16_that_loads_back_as_float32(tmp_path):
    from safetensors import safe_open

    from speechllm.cli import main
    from speechllm.speech_out.vocoder import UnitVocoder

    torch.manual_seed(5)
    vocoder = UnitVocoder(VocoderConfig(num_units=K, dim=32, blocks=1, n_fft=640)).eval()
    tiny_decoder().save(tmp_path / "decoder")
    vocoder.save(tmp_path / "vocoder")
    argv = ["speech", "pack", "--decoder", str(tmp_path / "decoder"), "--vocoder", str(tmp_path / "vocoder")]
    assert main([*argv, "--out", str(tmp_path / "speech"), "--chunk-units", "7"]) == 0
    with safe_open(str(tmp_path / "speech" / "vocoder" / "vocoder.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 (not a dict)
    again = UnitVocoder.load(tmp_path / "speech" / "vocoder")
    assert next(again.parameters()).dtype == torch.float32
    units = [1, 4, 2, 9]
    np.testing.assert_allclose(
        again.synthesize(units, [2, 1, 3, 1]), vocoder.synthesize(units, [2, 1, 3, 1]), atol=1e-2
    )
    assert "chunk_units: 7" in (tmp_path / "speech" / "speech_output.yaml").read_text()


def test_decoder_save_is_atomic_and_replaces_the_folder(tmp_path):
    first, second = tiny_decoder(), tiny_decoder()
    torch.nn.init.zeros_(second.out.weight)
    first.save(tmp_path / "dec")
    (tmp_path / "dec" / "stale.txt").write_text("from an older save")
    second.save(tmp_path / "dec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec"]  # no temporary or old folder left behind
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["speech_decoder.safetensors", "speech_decoder.yaml"]
    assert torch.equal(SpeechDecoder.load(tmp_path / "dec").out.weight, second.out.weight)
