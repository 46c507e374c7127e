"""Configs: YAML round trip, typed `a.b=value` overrides, unknown keys, and every `__post_init__` check."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from speechllm.config import (
    AdaptorConfig,
    CompressorConfig,
    EncoderConfig,
    LLMConfig,
    LoraConfig,
    SpeechLLMConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


def _custom() -> SpeechLLMConfig:
    return SpeechLLMConfig(
        encoder=EncoderConfig(source="random", padding="30s", layer="weighted", d_model=64, n_layers=2, n_heads=4),
        compressor=CompressorConfig(kind="ctc", ctc_mode="frame_average", ctc_vocab_size=33, ctc_blank_id=32),
        adaptor=AdaptorConfig(kind="swiglu", hidden_dim=96, output_scale=0.125),
        llm=LLMConfig(source="/models/llm", dtype="bfloat16"),
        lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]),
        prefix_attention="bidirectional",
        speech_token="<audio>",
        trainable=["adaptor", "lora"],
        system_prompt="Answer briefly.",
    )


@pytest.mark.parametrize("config", [SpeechLLMConfig(), _custom()], ids=["defaults", "custom"])
def test_yaml_round_trip(tmp_path, config):
    path = tmp_path / "c.yaml"
    save_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    assert isinstance(loaded.encoder, EncoderConfig) and isinstance(loaded.lora, LoraConfig)
    assert yaml.safe_load(path.read_text()) == to_dict(config)  # plain YAML: no Python tags


def test_saved_yaml_is_readable_nested_sections(tmp_path):
    save_config(_custom(), tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert list(data)[:5] == ["encoder", "compressor", "adaptor", "llm", "lora"]  # declaration order
    assert data["encoder"]["layer"] == "weighted"
    assert data["adaptor"] == {"kind": "swiglu", "hidden_dim": 96, "output_scale": 0.125, "select": "none"}
    assert data["system_prompt"] == "Answer briefly."


def test_overrides_are_typed_by_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adaptor:\n  kind: linear\n")
    config = load_config(
        path,
        [
            "encoder.layer=2",
            "encoder.source=/data/whisper",
            "adaptor.output_scale=0.5",
            "compressor.k=8",
            "lora.enabled=true",
            "trainable=[adaptor, lora]",
            "system_prompt='a=b'",  # only the first '=' splits
            "llm.dtype=float16",
        ],
    )
    assert config.encoder.layer == 2 and isinstance(config.encoder.layer, int)
    assert config.encoder.source == "/data/whisper"
    assert config.adaptor == AdaptorConfig(kind="linear", output_scale=0.5)  # file values kept
    assert config.compressor.k == 8
    assert config.lora.enabled is True
    assert config.trainable == ["adaptor", "lora"]
    assert config.system_prompt == "a=b"
    assert config.llm.dtype == "float16"


def test_override_string_value_weighted():
    data = apply_overrides({}, ["encoder.layer=weighted", "encoder.n_layers=6"])
    assert data == {"encoder": {"layer": "weighted", "n_layers": 6}}
    assert from_dict(SpeechLLMConfig, data).encoder.layer == "weighted"


def test_override_later_wins_and_edits_in_place():
    data = {"compressor": {"k": 2}}
    out = apply_overrides(data, ["compressor.k=3", "compressor.k=5"])
    assert out is data and data == {"compressor": {"k": 5}}


def test_bad_overrides():
    with pytest.raises(ValueError, match=re.escape("override 'encoder.layer' must look like key.path=value")):
        apply_overrides({}, ["encoder.layer"])
    with pytest.raises(ValueError, match="'prefix_attention' is not a section"):
        apply_overrides({"prefix_attention": "causal"}, ["prefix_attention.x=1"])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"bogus": 1}, r"unknown key\(s\) \['bogus'\] for SpeechLLMConfig"),
        ({"encoder": {"d_modle": 64}}, r"unknown key\(s\) \['d_modle'\] for EncoderConfig; expected some of \["),
        ({"lora": {"rank": 4, "alph": 1}}, r"unknown key\(s\) \['alph', 'rank'\] for LoraConfig"),
    ],
)
def test_unknown_keys_are_rejected_by_name(data, match):
    with pytest.raises(ValueError, match=match):
        from_dict(SpeechLLMConfig, data)


def test_unknown_key_from_an_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_config(path) == SpeechLLMConfig()  # an empty file is all defaults
    with pytest.raises(ValueError, match=r"\['hidden'\] for AdaptorConfig"):
        load_config(path, ["adaptor.hidden=3"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping at the top level, got list"):
        load_config(path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: EncoderConfig(padding="10s"), r"encoder.padding must be one of \['real', '30s', 'tail'\], got '10s'"),
        (lambda: EncoderConfig(layer="mean"), "encoder.layer must be an int or 'weighted', got 'mean'"),
        (lambda: EncoderConfig(source="random", layer=5), r"encoder.layer must be in \[-1, 4\], got 5"),
        (lambda: EncoderConfig(layer=-2), r"encoder.layer must be >= -1, got -2"),
        (lambda: EncoderConfig(source="random", n_layers=2, layer=3), r"encoder.layer must be in \[-1, 2\], got 3"),
        (lambda: EncoderConfig(n_mels=0), "encoder.n_mels must be > 0, got 0"),
        (lambda: EncoderConfig(max_positions=-1), "encoder.max_positions must be > 0, got -1"),
        (lambda: EncoderConfig(d_model=64, n_heads=6), r"encoder.d_model \(64\) must divide by n_heads \(6\)"),
        (
            lambda: CompressorConfig(kind="nope"),
            r"compressor.kind must be one of \['stack', 'pool', 'ctc'\], got 'nope'",
        ),
        (lambda: CompressorConfig(ctc_mode="greedy"), "compressor.ctc_mode must be one of .*got 'greedy'"),
        (lambda: CompressorConfig(k=0), "compressor.k must be > 0, got 0"),
        (lambda: CompressorConfig(ctc_vocab_size=-3), "compressor.ctc_vocab_size must be >= 0, got -3"),
        (lambda: AdaptorConfig(kind="conv"), r"adaptor.kind must be one of \['linear', 'mlp', 'swiglu'\], got 'conv'"),
        (lambda: AdaptorConfig(hidden_dim=0), "adaptor.hidden_dim must be > 0, got 0"),
        (lambda: LLMConfig(dtype="int8"), "llm.dtype must be one of .*got 'int8'"),
        (lambda: LoraConfig(r=0), "lora.r must be > 0, got 0"),
        (lambda: LoraConfig(dropout=1.0), r"lora.dropout must be in \[0, 1\), got 1.0"),
        (lambda: LoraConfig(dropout=-0.1), r"lora.dropout must be in \[0, 1\), got -0.1"),
        (lambda: LoraConfig(target_modules=[]), "lora.target_modules must name at least one module"),
        (lambda: SpeechLLMConfig(prefix_attention="full"), "prefix_attention must be one of .*got 'full'"),
        (lambda: SpeechLLMConfig(trainable=["adaptor", "decoder"]), "trainable part must be one of .*got 'decoder'"),
        (lambda: SpeechLLMConfig(trainable=["lora"]), "trainable lists 'lora' but lora.enabled is false"),
        (lambda: SpeechLLMConfig(speech_token=""), "speech_token must be a non-empty string"),
    ],
)
def test_post_init_checks(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_valid_edge_values_pass():
    assert EncoderConfig(layer=-1).layer == -1
    assert EncoderConfig(layer=0).layer == 0
    assert EncoderConfig(layer=4).layer == 4  # the last layer before the final norm
    assert LoraConfig(dropout=0.0).dropout == 0.0
    assert SpeechLLMConfig(lora=LoraConfig(enabled=True), trainable=["lora", "llm", "encoder"]).trainable[0] == "lora"


def test_post_init_checks_run_on_yaml_input(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainable: [lora]\n")
    with pytest.raises(ValueError, match=r"lora\.enabled is false"):
        load_config(path)
    assert load_config(path, ["lora.enabled=true"]).trainable == ["lora"]


def test_config_module_imports_no_torch():
    code = "import sys, speechllm.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_checkpoint_depth_decides_the_layer_bound(tiny_whisper_dir):
    from speechllm.model.encoder import load_whisper_encoder

    assert EncoderConfig(source=str(tiny_whisper_dir), layer=5).layer == 5  # depth unknown until loaded
    with pytest.raises(ValueError, match=r"encoder.layer is 5 but .* has 2 layers"):
        load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), layer=5))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"encoder": 5}, "SpeechLLMConfig.encoder must be a mapping, got 5"),
        ({"compressor": {"k": 2.5}}, "CompressorConfig.k must be int, got float 2.5"),
        ({"compressor": {"k": True}}, "CompressorConfig.k must be int, got bool True"),
        ({"encoder": {"d_model": "abc"}}, "EncoderConfig.d_model must be int, got str 'abc'"),
        ({"lora": {"enabled": "yes"}}, "LoraConfig.enabled must be bool, got str 'yes'"),
    ],
)
def test_from_dict_rejects_wrong_types(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_dict(SpeechLLMConfig, data)


def test_from_dict_accepts_an_int_for_a_float():
    assert from_dict(SpeechLLMConfig, {"adaptor": {"output_scale": 2}}).adaptor.output_scale == 2
