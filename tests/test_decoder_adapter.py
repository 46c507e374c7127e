"""Low-rank adapters for the whisper recognizer (`bridge.adapter`): merged into the PyTorch decoder they
give exactly what peft's unmerged adapters give, CTranslate2 reads the same merged weights from its
patched model.bin, only the adapted variables change, and bad adapter files are named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from speechllm.weights.decoder_adapter import adapter_scale_metadata, merge_deltas, patch_ct2_model, read_adapter
from speechllm.weights.errors import WeightsError
from speechllm.weights.whisper import read_ct2_model

pytest.importorskip("ctranslate2")

TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
           "encoder_attn.q_proj", "encoder_attn.out_proj", "fc1", "fc2"]  # fmt: skip


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    from conftest import convert_tiny_whisper

    return convert_tiny_whisper(tmp_path_factory.mktemp("peaked_adapter"), decoder_scale=10.0)


def _peft_decoder(source: str, seed: int = 0):
    """The tiny decoder with peft LoRA on TARGETS, lora_B random (peft starts it at zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    from speechllm.model.whisper_decoder import load_whisper_decoder

    decoder = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), load_whisper_decoder(source, "float32", "exact")
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return decoder.eval()


def _save_adapter(decoder, path, scale: float = 2.0) -> str:
    from peft import get_peft_model_state_dict

    tensors = {k: v.contiguous() for k, v in get_peft_model_state_dict(decoder).items()}
    save_file(tensors, str(path), metadata=adapter_scale_metadata(scale))
    return str(path)


def _states(seed: int) -> torch.Tensor:
    return torch.randn(1, 1500, 64, generator=torch.Generator().manual_seed(seed))  # 1, S, D


def _first_logits(decoder, states: torch.Tensor) -> torch.Tensor:
    caches = decoder._cross_cache(states)
    return decoder._step(torch.tensor([decoder.arch.prompt]), 0, caches, None)


def test_merged_adapter_gives_what_peft_gives(peaked, tmp_path):
    from speechllm.model.whisper_decoder import load_whisper_decoder

    source = str(peaked["float32"])
    lora = _peft_decoder(source)
    merged = load_whisper_decoder(source, "float32", "exact", adapter=_save_adapter(lora, tmp_path / "a.safetensors"))
    plain = load_whisper_decoder(source, "float32", "exact")
    with torch.no_grad():
        for seed in range(3):
            ours, peft, before = (_first_logits(d, _states(seed)) for d in (merged, lora, plain))
            assert torch.allclose(ours, peft, atol=1e-4)
            assert (ours - before).abs().max() > 1e-2  # the adapter does change the decoder


def test_ctranslate2_reads_the_merged_weights(peaked, tmp_path):
    from speechllm.model.ct2_decoder import load_ct2_decoder
    from speechllm.model.whisper_decoder import load_whisper_decoder

    source = str(peaked["float32"])
    adapter = _save_adapter(_peft_decoder(source, seed=1), tmp_path / "a.safetensors")
    ours = load_whisper_decoder(source, "float32", "exact", adapter=adapter)
    ct2 = load_ct2_decoder(source, "float32", threads=1, adapter=adapter)
    plain = load_ct2_decoder(source, "float32", threads=1)
    changed = 0
    for seed in range(4):
        states = _states(seed)
        theirs = ct2.nbest(states, beam_size=3, max_tokens=12)
        mine = sorted(ours.nbest(states, beam_size=3, max_tokens=12), key=lambda h: -h[1])[:3]
        assert [ids for ids, _ in theirs] == [ids for ids, _ in mine]
        changed += plain.nbest(states, beam_size=3, max_tokens=12) != theirs
    assert changed  # the patched model decodes differently from the checkpoint as shipped


def test_patch_changes_only_the_adapted_variables(peaked, tmp_path):
    model_bin = peaked["float32"] / "model.bin"
    deltas = {"layers.1.self_attn.v_proj.weight": torch.full((64, 64), 0.5), "layers.0.fc2.weight": torch.ones(64, 128)}
    patched_path = tmp_path / "model.bin"
    patched_path.write_bytes(patch_ct2_model(model_bin.read_bytes(), deltas))
    before, after = read_ct2_model(model_bin), read_ct2_model(patched_path)
    assert before.keys() == after.keys()
    changed = {name for name in before if not (before[name] == after[name]).all()}
    assert changed == {"decoder/layer_1/self_attention/linear_0/weight", "decoder/layer_0/ffn/linear_1/weight"}
    qkv = (
        after["decoder/layer_1/self_attention/linear_0/weight"]
        - before["decoder/layer_1/self_attention/linear_0/weight"]
    )
    assert (qkv[:128] == 0).all() and torch.allclose(
        torch.from_numpy(qkv[128:]), torch.full((64, 64), 0.5)
    )  # v: rows 2D..3D


def test_merge_deltas_adds_and_names_what_does_not_fit():
    sd = {"layers.0.fc1.weight": torch.zeros(3, 2), "layers.0.fc1.bias": torch.zeros(3)}
    merged = merge_deltas(sd, {"layers.0.fc1.weight": torch.ones(3, 2)})
    assert (merged["layers.0.fc1.weight"] == 1).all() and (sd["layers.0.fc1.weight"] == 0).all()
    with pytest.raises(WeightsError, match="does not have"):
        merge_deltas(sd, {"layers.9.fc1.weight": torch.ones(3, 2)})
    with pytest.raises(WeightsError, match=r"\(2, 3\).*bridge.adapter=null"):  # another checkpoint's adapter
        merge_deltas(sd, {"layers.0.fc1.weight": torch.ones(2, 3)})


def test_adapter_files_that_cannot_be_read_are_named(tmp_path):
    pair = {"layers.0.fc1.lora_A.weight": torch.ones(2, 4), "layers.0.fc1.lora_B.weight": torch.ones(6, 2)}
    save_file(pair, str(tmp_path / "no_scale.safetensors"))
    with pytest.raises(WeightsError, match="lora_scale"):
        read_adapter(tmp_path / "no_scale.safetensors")
    save_file(
        {"layers.0.fc1.lora_A.weight": torch.ones(2, 4)},
        str(tmp_path / "half.safetensors"),
        metadata=adapter_scale_metadata(1.0),
    )
    with pytest.raises(WeightsError, match="lora_B"):
        read_adapter(tmp_path / "half.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        read_adapter(tmp_path / "missing.safetensors")
    save_file(pair, str(tmp_path / "ok.safetensors"), metadata=adapter_scale_metadata(0.5))
    delta = read_adapter(tmp_path / "ok.safetensors")["layers.0.fc1.weight"]
    assert delta.shape == (6, 4) and torch.allclose(delta, torch.full((6, 4), 1.0))  # 0.5 * (B @ A) = 0.5 * 2
    with pytest.raises(WeightsError, match="no CTranslate2 decoder variable"):
        patch_ct2_model(b"", {"embed_tokens.weight": torch.ones(2, 2)})


def test_a_checkpoint_keeps_its_adapter(peaked, tiny_config, tmp_path):
    import dataclasses

    from speechllm.config import BridgeConfig
    from speechllm.model import build_speech_llm, save_pretrained
    from speechllm.model.checkpoint import ADAPTER_FILE, from_pretrained

    source = str(peaked["float32"])
    adapter = _save_adapter(_peft_decoder(source, seed=2), tmp_path / "trained.safetensors")
    tiny_config.encoder = dataclasses.replace(tiny_config.encoder, source=source, padding="30s")
    tiny_config.bridge = BridgeConfig(mode="top1", recognizer="whisper", engine="ctranslate2", compute_type="float32",
                                      beam_size=2, max_tokens=6, tidy=False, adapter=adapter)  # fmt: skip
    model = build_speech_llm(tiny_config).eval()
    saved = save_pretrained(model, tmp_path / "ckpt")
    assert (saved / ADAPTER_FILE).read_bytes() == (tmp_path / "trained.safetensors").read_bytes()
    assert f"adapter: {ADAPTER_FILE}" in (saved / "config.yaml").read_text()  # relative: the folder can move
    moved = saved.rename(tmp_path / "moved")
    (tmp_path / "trained.safetensors").unlink()
    again = from_pretrained(moved)
    states = _states(5)
    assert again.recognizer.nbest(states, 2, 6) == model.recognizer.nbest(states, 2, 6)


def test_an_adapter_says_the_encoding_it_was_trained_on_and_a_mismatch_is_named(tmp_path):
    from speechllm.weights.decoder_adapter import padding_mismatch

    tensors = {"layers.0.fc1.lora_A.weight": torch.ones(2, 4), "layers.0.fc1.lora_B.weight": torch.ones(3, 2)}
    said, silent = tmp_path / "tail.safetensors", tmp_path / "old.safetensors"
    save_file(tensors, str(said), metadata=adapter_scale_metadata(2.0, "tail"))
    save_file(tensors, str(silent), metadata=adapter_scale_metadata(2.0))
    assert padding_mismatch(said, "tail") is None
    why = padding_mismatch(said, "30s")
    assert why is not None and "encoder.padding=tail" in why and "30s" in why
    assert padding_mismatch(silent, "30s") is None  # a file that does not say is not judged
    torch.testing.assert_close(read_adapter(said)["layers.0.fc1.weight"], 2.0 * torch.full((3, 4), 2.0))
