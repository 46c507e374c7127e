"""CTranslate2 Whisper weights: a synthetic model.bin read back exactly, mapped onto our encoder, split
files, corrupt files; and a real CT2 conversion of a tiny random Whisper checked against CT2 and HF."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechllm.config import EncoderConfig
from speechllm.model.encoder import load_whisper_encoder
from speechllm.weights.errors import WeightsError
from speechllm.weights.whisper import read_ct2_model

# CTranslate2's DataType ids (float32=0 int8=1 int16=2 int32=3 float16=4 bfloat16=5).
DTYPE_IDS = {np.dtype(t): i for i, t in enumerate([np.float32, np.int8, np.int16, np.int32, np.float16])}
BFLOAT16 = 5  # numpy has no bfloat16: such variables are passed as their raw uint16 bits

D, N_MELS, N_HEADS, FFN, POSITIONS, N_LAYERS = 8, 4, 2, 16, 12, 2


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw  # u16 length including the NUL


def write_ct2(
    path: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    version: int = 6,
    dtype_ids: dict[str, int] | None = None,
) -> bytes:
    """Write `variables` as a CTranslate2 model.bin (binary `version`) and return its bytes.

    `dtype_ids` overrides a variable's dtype id (bfloat16 is passed as its raw uint16 bits).
    """
    out = [struct.pack("<I", version), _string("WhisperSpec"), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name, value in variables.items():
        value = np.asarray(value)  # not ascontiguousarray: it turns a scalar into shape (1,)
        dtype_id = (dtype_ids or {}).get(name, DTYPE_IDS.get(value.dtype))
        out += [_string(name), struct.pack("<B", value.ndim)]
        out += [struct.pack("<I", dim) for dim in value.shape]
        out += [struct.pack("<B", dtype_id), struct.pack("<I", value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [_string(alias), _string(target)]
    data = b"".join(out)
    path.write_bytes(data)
    return data


def tiny_encoder_variables(seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer Whisper encoder (d 8, 4 mels, 2 heads, ffn 16, 12 positions) in float16, named as CT2 names it."""
    rng = np.random.default_rng(seed)

    def f16(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float16)

    v = {
        "encoder/conv1/weight": f16(D, N_MELS, 3),
        "encoder/conv1/bias": f16(D),
        "encoder/conv2/weight": f16(D, D, 3),
        "encoder/conv2/bias": f16(D),
        "encoder/position_encodings/encodings": f16(POSITIONS, D),
    }
    for i in range(N_LAYERS):
        p = f"encoder/layer_{i}"
        qkv_bias = f16(3 * D)
        qkv_bias[D : 2 * D] = 0  # Whisper's key has no bias; CT2 stores zeros
        v |= {
            f"{p}/self_attention/layer_norm/gamma": f16(D),
            f"{p}/self_attention/layer_norm/beta": f16(D),
            f"{p}/self_attention/linear_0/weight": f16(3 * D, D),
            f"{p}/self_attention/linear_0/bias": qkv_bias,
            f"{p}/self_attention/linear_1/weight": f16(D, D),
            f"{p}/self_attention/linear_1/bias": f16(D),
            f"{p}/ffn/layer_norm/gamma": f16(D),
            f"{p}/ffn/layer_norm/beta": f16(D),
            f"{p}/ffn/linear_0/weight": f16(FFN, D),
            f"{p}/ffn/linear_0/bias": f16(FFN),
            f"{p}/ffn/linear_1/weight": f16(D, FFN),
            f"{p}/ffn/linear_1/bias": f16(D),
        }
    v["encoder/layer_norm/gamma"] = f16(D)
    v["encoder/layer_norm/beta"] = f16(D)
    v["encoder/num_heads"] = np.array(N_HEADS, dtype=np.int16)  # a scalar: shape []
    return v


ALIASES = {"decoder/embeddings/weight_alias": "encoder/conv1/bias"}


@pytest.fixture()
def ct2_dir(tmp_path) -> tuple[Path, dict[str, np.ndarray], bytes]:
    variables = tiny_encoder_variables()
    data = write_ct2(tmp_path / "model.bin", variables, ALIASES)
    return tmp_path, variables, data


def _expected_state_dict(v: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(v[name].astype(np.float32))

    sd = {
        "conv1.weight": t("encoder/conv1/weight"),
        "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"),
        "conv2.bias": t("encoder/conv2/bias"),
        "embed_positions.weight": t("encoder/position_encodings/encodings"),
        "layer_norm.weight": t("encoder/layer_norm/gamma"),
        "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    for i in range(N_LAYERS):
        p, q = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = t(f"{p}/self_attention/linear_0/weight"), t(f"{p}/self_attention/linear_0/bias")
        sd |= {
            f"{q}.self_attn.q_proj.weight": qkv_w[:D],
            f"{q}.self_attn.q_proj.bias": qkv_b[:D],
            f"{q}.self_attn.k_proj.weight": qkv_w[D : 2 * D],
            f"{q}.self_attn.v_proj.weight": qkv_w[2 * D :],
            f"{q}.self_attn.v_proj.bias": qkv_b[2 * D :],
            f"{q}.self_attn.out_proj.weight": t(f"{p}/self_attention/linear_1/weight"),
            f"{q}.self_attn.out_proj.bias": t(f"{p}/self_attention/linear_1/bias"),
            f"{q}.self_attn_layer_norm.weight": t(f"{p}/self_attention/layer_norm/gamma"),
            f"{q}.self_attn_layer_norm.bias": t(f"{p}/self_attention/layer_norm/beta"),
            f"{q}.fc1.weight": t(f"{p}/ffn/linear_0/weight"),
            f"{q}.fc1.bias": t(f"{p}/ffn/linear_0/bias"),
            f"{q}.fc2.weight": t(f"{p}/ffn/linear_1/weight"),
            f"{q}.fc2.bias": t(f"{p}/ffn/linear_1/bias"),
            f"{q}.final_layer_norm.weight": t(f"{p}/ffn/layer_norm/gamma"),
            f"{q}.final_layer_norm.bias": t(f"{p}/ffn/layer_norm/beta"),
        }
    return sd


def _assert_encoder_matches(encoder, variables: dict[str, np.ndarray]) -> None:
    c = encoder.config
    assert (c.n_mels, c.d_model, c.n_layers, c.n_heads, c.ffn_dim, c.max_positions) == (
        N_MELS,
        D,
        N_LAYERS,
        N_HEADS,
        FFN,
        POSITIONS,
    )
    state = encoder.state_dict()
    expected = _expected_state_dict(variables)
    assert set(state) == set(expected)  # every weight comes from the file; k_proj has no bias
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


# ----------------------------------------------------------------------------- reading model.bin


def test_read_ct2_model_reads_every_array_exactly(ct2_dir):
    directory, variables, _ = ct2_dir
    got = read_ct2_model(directory / "model.bin")
    assert set(got) == set(variables) | set(ALIASES)
    for name, value in variables.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert np.array_equal(got[name], value), name
    assert got["encoder/num_heads"].shape == () and int(got["encoder/num_heads"]) == N_HEADS
    assert np.array_equal(got["decoder/embeddings/weight_alias"], variables["encoder/conv1/bias"])


def test_read_ct2_model_every_dtype(tmp_path):
    bf16_values = np.array([1.0, -2.5, 0.15625, 2.0**127], dtype=np.float32)  # exact in bfloat16
    variables = {
        "f32": np.array([[1.5, -2.0]], dtype=np.float32),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "i16": np.array([-30000, 7], dtype=np.int16),
        "i32": np.array([2**31 - 1], dtype=np.int32),
        "f16": np.array([0.5, 65504.0], dtype=np.float16),
        "bf16": (bf16_values.view(np.uint32) >> 16).astype(np.uint16),
    }
    write_ct2(tmp_path / "model.bin", variables, {"dangling": "nowhere"}, dtype_ids={"bf16": BFLOAT16})
    got = read_ct2_model(tmp_path / "model.bin")
    for name in ("f32", "i8", "i16", "i32", "f16"):
        assert got[name].dtype == variables[name].dtype and np.array_equal(got[name], variables[name]), name
    assert got["bf16"].dtype == np.float32 and np.array_equal(got["bf16"], bf16_values)
    assert "dangling" not in got  # an alias of a missing variable is dropped


# ----------------------------------------------------------------------------- loading the encoder


def test_load_whisper_encoder_maps_every_weight(ct2_dir):
    directory, variables, _ = ct2_dir
    encoder = load_whisper_encoder(EncoderConfig(source=str(directory)))
    _assert_encoder_matches(encoder, variables)
    assert encoder.config.source == str(directory)
    with torch.no_grad():
        out, lengths = encoder(torch.randn(2, N_MELS, 2 * POSITIONS), torch.tensor([2 * POSITIONS, 7]))
    assert out.shape == (2, POSITIONS, D) and lengths.tolist() == [POSITIONS, 4]
    assert torch.isfinite(out).all()


def test_split_files_load_the_same(ct2_dir, tmp_path_factory):
    _, variables, data = ct2_dir
    split = tmp_path_factory.mktemp("split")
    cut = len(data) // 2 + 3  # inside some variable's bytes
    (split / "model.bin.part0").write_bytes(data[:cut])
    (split / "model.bin.part1").write_bytes(data[cut:])
    got = read_ct2_model([split / "model.bin.part0", split / "model.bin.part1"])
    assert all(np.array_equal(got[name], value) for name, value in variables.items())
    _assert_encoder_matches(load_whisper_encoder(EncoderConfig(source=str(split))), variables)


def test_more_than_ten_split_files_load_in_numeric_order(ct2_dir, tmp_path_factory):
    _, variables, data = ct2_dir
    split = tmp_path_factory.mktemp("split12")
    bounds = np.linspace(0, len(data), 13).astype(int)
    for i in range(12):
        (split / f"model.bin.part{i}").write_bytes(data[bounds[i] : bounds[i + 1]])
    _assert_encoder_matches(load_whisper_encoder(EncoderConfig(source=str(split))), variables)


# ----------------------------------------------------------------------------- errors


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(WeightsError, match=re.escape(f"encoder source '{missing}' is not a directory")):
        load_whisper_encoder(EncoderConfig(source=str(missing)))
    with pytest.raises(WeightsError, match=re.escape(f"CTranslate2 weights not found: {missing / 'model.bin'}")):
        read_ct2_model(missing / "model.bin")


def test_empty_directory(tmp_path):
    with pytest.raises(WeightsError, match=re.escape(f"{tmp_path}: neither a CTranslate2 (model.bin) nor")):
        load_whisper_encoder(EncoderConfig(source=str(tmp_path)))


@pytest.mark.parametrize("keep", [0, 3, 40, -5])
def test_truncated_file(ct2_dir, keep):
    directory, _, data = ct2_dir
    path = directory / "model.bin"
    path.write_bytes(data[:keep])
    with pytest.raises(WeightsError, match=re.escape(f"{path}: truncated CTranslate2 file")):
        load_whisper_encoder(EncoderConfig(source=str(directory)))


@pytest.mark.parametrize("version", [4, 7, 0x46554747])  # 0x46554747: a GGUF file's magic
def test_wrong_binary_version(tmp_path, version):
    path = tmp_path / "model.bin"
    write_ct2(path, tiny_encoder_variables(), version=version)
    with pytest.raises(
        WeightsError, match=re.escape(f"{path}: not a CTranslate2 model.bin") + f".*binary version {version},"
    ):
        read_ct2_model(path)


def test_unknown_dtype_id(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, {"encoder/odd": np.zeros(2, np.float32)}, dtype_ids={"encoder/odd": 9})
    with pytest.raises(WeightsError, match="variable 'encoder/odd' has unknown dtype id 9"):
        read_ct2_model(path)


def test_not_a_whisper_model(tmp_path):
    write_ct2(tmp_path / "model.bin", {"decoder/embeddings/weight": np.zeros((4, 2), np.float16)})
    with pytest.raises(WeightsError, match="no variable 'encoder/conv1/weight'"):
        load_whisper_encoder(EncoderConfig(source=str(tmp_path)))


def test_missing_layer_weight_is_named(tmp_path):
    variables = tiny_encoder_variables()
    del variables["encoder/layer_1/ffn/layer_norm/beta"]
    write_ct2(tmp_path / "model.bin", variables)
    with pytest.raises((KeyError, WeightsError), match="encoder/layer_1/ffn/layer_norm/beta"):
        load_whisper_encoder(EncoderConfig(source=str(tmp_path)))


# ----------------------------------------------------------------------------- a real CT2 conversion


def test_encoder_from_real_ct2_conversion_matches_ct2_and_transformers(converted):
    ctranslate2 = converted["ctranslate2"]
    ours = load_whisper_encoder(EncoderConfig(source=str(converted["float32"]), padding="30s")).eval()
    c = ours.config
    assert (c.n_mels, c.d_model, c.n_layers, c.n_heads, c.ffn_dim, c.max_positions) == (80, 64, 2, 4, 128, 1500)
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, lengths = ours(feats, torch.tensor([3000]))
        hf = converted["hf_model"].model.encoder(feats).last_hidden_state
    ct2_model = ctranslate2.models.Whisper(str(converted["float32"]), device="cpu")
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy()))
    ct2_out = torch.from_numpy(np.array(ct2_model.encode(storage, to_cpu=True)))
    assert lengths.tolist() == [1500] and got.shape == ct2_out.shape == hf.shape == (1, 1500, 64)
    assert (got - ct2_out).abs().max() < 1e-4
    assert (got - hf).abs().max() < 1e-5
    # Our weights are the HF weights, bit for bit: CT2 float32 stores them unchanged.
    hf_sd = converted["hf_model"].model.encoder.state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, hf_sd[name]), name


def test_int8_ct2_conversion_is_dequantized(converted):
    ours = load_whisper_encoder(EncoderConfig(source=str(converted["int8"])))
    hf_sd = converted["hf_model"].model.encoder.state_dict()
    for name in ("conv1.weight", "layers.0.self_attn.q_proj.weight", "layers.1.fc2.weight"):
        ref = hf_sd[name]
        # int8 with a per-row scale: at most half a step (max|row| / 127 / 2) from the float weight
        assert (ours.state_dict()[name] - ref).abs().max() <= ref.abs().max() / 127, name


def test_a_checkpoint_split_over_two_packages_finds_its_tokenizer_by_either_part(tmp_path):
    from speechllm.weights.whisper_decoder import metadata_dir

    first, second = tmp_path / "pkg1" / "data", tmp_path / "pkg2" / "data"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    assert metadata_dir(first, parts) == first  # nothing anywhere: the named folder (its error names it)
    (second / "tokenizer.json").write_text("{}")
    assert metadata_dir(first, parts) == second
    (first / "tokenizer.json").write_text("{}")
    assert metadata_dir(first, parts) == first  # the named folder first
