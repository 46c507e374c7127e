"""Our Whisper encoder against transformers' on a tiny random checkpoint; lengths, layers, windows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechllm.config import EncoderConfig
from speechllm.model.encoder import WhisperEncoder, encoder_output_lengths, load_whisper_encoder
from speechllm.model.features import LogMel
from speechllm.weights.errors import WeightsError


@pytest.fixture(scope="module")
def hf_encoder(tiny_whisper_dir):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).model.encoder.eval()


def test_matches_transformers_on_30s_input(tiny_whisper_dir, hf_encoder):
    ours = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), padding="30s")).eval()
    assert (ours.config.d_model, ours.config.n_layers, ours.config.n_heads) == (64, 2, 4)
    torch.manual_seed(0)
    feats = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ref = hf_encoder(feats).last_hidden_state
        got, lengths = ours(feats, torch.tensor([3000, 3000]))
    assert lengths.tolist() == [1500, 1500]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_a_bfloat16_encoder_computes_its_layers_in_bfloat16_and_returns_float32(tiny_whisper_dir):
    full = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), padding="30s")).eval()
    low = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), padding="30s", precision="bfloat16"))
    low.eval()
    seen: list[torch.dtype] = []
    low.layers[0].self_attn.q_proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    torch.manual_seed(0)
    feats = torch.randn(1, 80, 3000)
    with torch.no_grad():
        ref, _ = full(feats, torch.tensor([3000]))
        got, _ = low(feats, torch.tensor([3000]))
    assert seen == [torch.bfloat16] and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.1, atol=0.1)
    assert not torch.equal(got, ref)
    assert full.fingerprint() != low.fingerprint()  # a cache of its outputs is not the float32 one's
    with pytest.raises(ValueError, match=r"encoder\.precision"):
        EncoderConfig(precision="float16")


def test_layer_selection_matches_transformers_hidden_states(tiny_whisper_dir, hf_encoder):
    feats = torch.randn(1, 80, 3000)
    with torch.no_grad():
        hidden = hf_encoder(feats, output_hidden_states=True).hidden_states  # embeddings, layer 1, normed layer 2
        for layer in (0, 1):
            enc = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), padding="30s", layer=layer))
            torch.testing.assert_close(enc(feats, torch.tensor([3000]))[0], hidden[layer], atol=1e-5, rtol=1e-5)


def test_weighted_layers_start_as_the_mean_and_train(tiny_whisper_dir):
    enc = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), layer="weighted"))
    assert enc.layer_weights is not None and enc.layer_weights.shape == (3,)
    out, _ = enc(torch.randn(1, 80, 200), torch.tensor([200]))
    out.sum().backward()
    assert enc.layer_weights.grad is not None and enc.layer_weights.grad.abs().sum() > 0


def test_real_length_batch_equals_each_item_alone(tiny_whisper_dir):
    enc = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir))).eval()
    torch.manual_seed(1)
    feats = torch.randn(2, 80, 240)
    feats[1, :, 150:] = 99.0  # garbage in the padded tail must not leak into item 1
    with torch.no_grad():
        batch, lengths = enc(feats, torch.tensor([240, 150]))
        alone, _ = enc(feats[1:, :, :150], torch.tensor([150]))
    assert lengths.tolist() == [120, 75] and batch.shape == (2, 120, 64)
    torch.testing.assert_close(batch[1, :75], alone[0], atol=1e-5, rtol=1e-5)
    assert batch[1, 75:].abs().sum() == 0


def test_long_audio_is_encoded_in_30s_windows(tiny_whisper_dir):
    enc = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir))).eval()
    feats = torch.randn(1, 80, 3000 + 700)
    with torch.no_grad():
        out, lengths = enc.encode(feats, torch.tensor([3700]))
        first, _ = enc(feats[..., :3000], torch.tensor([3000]))
        second, _ = enc(feats[..., 3000:], torch.tensor([700]))
    assert lengths.tolist() == [1850]
    torch.testing.assert_close(out[0], torch.cat([first[0], second[0]]))
    with pytest.raises(ValueError, match="at most 3000 frames"):
        enc(feats, torch.tensor([3700]))


def test_output_length_arithmetic():
    assert encoder_output_lengths(torch.tensor([1, 2, 3, 100, 101, 3000])).tolist() == [1, 1, 2, 50, 51, 1500]


def test_wrong_mel_count_is_rejected():
    enc = WhisperEncoder(EncoderConfig(source="random", d_model=32, n_layers=1, n_heads=2, ffn_dim=64))
    with pytest.raises(ValueError, match="expects 80 mel bins"):
        enc(torch.randn(1, 128, 100), torch.tensor([100]))


def test_fingerprint_tracks_weights_and_config():
    cfg = EncoderConfig(source="random", d_model=32, n_layers=1, n_heads=2, ffn_dim=64)
    torch.manual_seed(0)
    a = WhisperEncoder(cfg)
    fp = a.fingerprint()
    assert fp == a.fingerprint()
    with torch.no_grad():
        a.conv1.bias[0] += 1e-3
    assert a.fingerprint() != fp
    b = WhisperEncoder(dataclasses.replace(cfg, padding="30s"))
    b.load_state_dict(a.state_dict())
    assert b.fingerprint() != a.fingerprint()


def test_log_mel_lengths_and_30s_padding(tone):
    audio = tone(1.3)
    feats, lengths = LogMel(80)([audio, audio[:8000]])
    assert feats.shape == (2, 80, 130) and lengths.tolist() == [130, 50]
    padded, lengths = LogMel(80, pad_to_30s=True)([audio])
    assert padded.shape == (1, 80, 3000) and lengths.tolist() == [130]
    torch.testing.assert_close(padded[0, :, :100], LogMel(80, pad_to_30s=True)([audio])[0][0, :, :100])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        LogMel(80)([audio[:0]])


def test_hf_directory_errors(tmp_path):
    with pytest.raises(WeightsError, match="is not a directory"):
        load_whisper_encoder(EncoderConfig(source=str(tmp_path / "missing")))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(WeightsError, match="expected 'whisper'"):
        load_whisper_encoder(EncoderConfig(source=str(tmp_path)))
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_whisper_encoder(EncoderConfig(source=str(tmp_path)))
