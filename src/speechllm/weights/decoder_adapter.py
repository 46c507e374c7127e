"""Low-rank adapters for a Whisper text decoder (`bridge.adapter`), merged into its weights at load.

An adapter file is a safetensors file of LoRA pairs (Hu et al. 2021) as peft saves them for our
`WhisperTextDecoder` (`layers.{i}.{module}.lora_A.weight` (r, in), `...lora_B.weight` (out, r)) with
its scale (`lora_alpha / r`) in the file's metadata. Merged, each adapted linear layer's weight
becomes W + scale * B @ A: the decoder then runs at the speed of the original.

The PyTorch decoder merges the deltas into its state dict (`merge_deltas`). CTranslate2 reads a
model.bin, so `patch_ct2_model` writes the merged weights into a copy of the checkpoint's bytes,
each variable in place (same shape, same dtype): the rest of the file is untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from speechllm.weights.errors import WeightsError

OTHER_CHECKPOINT = (
    "an adapter fits the checkpoint it was trained on (the default's: Whisper tiny.en); "
    "for another encoder.source set bridge.adapter=null"
)
SCALE_KEY = "lora_scale"
"""Metadata key of an adapter file's scale (lora_alpha / r)."""
PADDING_KEY = "encoder_padding"
"""Metadata key of the encoding an adapter was trained on (`encoder.padding`: `30s` or `tail`), if known."""


def read_adapter(path: str | Path) -> dict[str, Tensor]:
    """The weight deltas (out, in) of an adapter file, by the adapted parameter's name
    (`layers.0.fc1.weight`)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"recognizer adapter not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:  # safetensors raises several types on corrupt files
        raise WeightsError(f"{path}: cannot read the adapter ({type(e).__name__}: {e})") from e
    if SCALE_KEY not in meta:
        raise WeightsError(f"{path}: an adapter file needs its scale in the metadata ({SCALE_KEY!r})")
    scale = float(meta[SCALE_KEY])
    deltas = {}
    for name in tensors:
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[: -len(".lora_A.weight")]
        b = tensors.get(f"{module}.lora_B.weight")
        if b is None:
            raise WeightsError(f"{path}: {name} has no lora_B partner")
        deltas[f"{module}.weight"] = scale * (b.float() @ tensors[name].float())  # out, r @ r, in -> out, in
    if not deltas:
        raise WeightsError(f"{path}: no LoRA pairs (*.lora_A.weight / *.lora_B.weight) in the adapter")
    return deltas


def merge_deltas(state_dict: dict[str, Tensor], deltas: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state_dict` with each delta added to the weight it names (a new dict; the inputs unchanged)."""
    out = dict(state_dict)
    for name, delta in deltas.items():
        if name not in out:
            raise WeightsError(f"the adapter changes {name!r}, which this decoder does not have")
        if out[name].shape != delta.shape:
            raise WeightsError(
                f"the adapter's {name} is {tuple(delta.shape)}, the decoder's {tuple(out[name].shape)}: "
                + OTHER_CHECKPOINT
            )
        out[name] = out[name] + delta.to(out[name].dtype)
    return out


CT2_NAMES = {
    # ours -> (CTranslate2 variable, first row): CT2 fuses self-attention q, k, v into one matrix (3D, D)
    "self_attn.q_proj": ("self_attention/linear_0", 0),
    "self_attn.k_proj": ("self_attention/linear_0", 1),
    "self_attn.v_proj": ("self_attention/linear_0", 2),
    "self_attn.out_proj": ("self_attention/linear_1", 0),
    "encoder_attn.q_proj": ("attention/linear_0", 0),
    "encoder_attn.k_proj": ("attention/linear_1", 0),
    "encoder_attn.v_proj": ("attention/linear_1", 1),
    "encoder_attn.out_proj": ("attention/linear_2", 0),
    "fc1": ("ffn/linear_0", 0),
    "fc2": ("ffn/linear_1", 0),
}


def ct2_deltas(deltas: dict[str, Tensor]) -> dict[str, list[tuple[int, Tensor]]]:
    """Decoder deltas by CTranslate2 variable: (first row in that, possibly fused, matrix; delta) each."""
    out: dict[str, list[tuple[int, Tensor]]] = {}
    for name, delta in deltas.items():
        parts = name.removesuffix(".weight").split(".", 2)  # layers, i, module
        if len(parts) != 3 or parts[0] != "layers" or parts[2] not in CT2_NAMES:
            raise WeightsError(f"the adapter changes {name!r}, which has no CTranslate2 decoder variable")
        layer, (variable, block) = parts[1], CT2_NAMES[parts[2]]
        out.setdefault(f"decoder/layer_{layer}/{variable}/weight", []).append((block * delta.shape[0], delta))
    return out


PATCHABLE = (np.float32, np.float16)
"""The CTranslate2 variable dtypes (`weights.whisper.CT2_DTYPES`) a patched weight may have (a float
checkpoint: int8 ones are quantized at load by `compute_type`, not stored)."""


def patch_ct2_model(data: bytes, deltas: dict[str, Tensor]) -> bytes:
    """A copy of a CTranslate2 model.bin (`data`; layout in `speechllm.weights.whisper`) with each
    decoder delta (`ct2_deltas` of our names) added to its variable, written in place in the
    variable's own dtype."""
    from speechllm.weights.whisper import CT2_DTYPES, ct2_layout

    wanted = ct2_deltas(deltas)
    out = bytearray(data)
    found = set()
    for v in ct2_layout(data, Path("model.bin"))[0]:
        if v.name not in wanted:
            continue
        dtype = CT2_DTYPES.get(v.dtype_id)
        if dtype not in PATCHABLE:
            raise WeightsError(f"{v.name}: can only patch float32 / float16 variables, got dtype id {v.dtype_id}")
        value = np.frombuffer(data[v.offset : v.offset + v.size], dtype=dtype).reshape(v.shape).astype(np.float32)
        for row, delta in wanted[v.name]:
            rows = delta.shape[0]
            if row + rows > value.shape[0] or delta.shape[1] != value.shape[1]:
                raise WeightsError(
                    f"{v.name}: a {tuple(delta.shape)} delta at row {row} does not fit {tuple(value.shape)}: "
                    + OTHER_CHECKPOINT
                )
            value[row : row + rows] += delta.numpy()
        out[v.offset : v.offset + v.size] = value.astype(dtype).tobytes()
        found.add(v.name)
    if missing := sorted(set(wanted) - found):
        raise WeightsError(f"the CTranslate2 model has no variables {missing[:5]} for the adapter")
    return bytes(out)


def adapter_scale_metadata(scale: float, padding: str | None = None) -> dict[str, str]:
    """The metadata an adapter file carries (`save_file(..., metadata=...)`): its scale and, when
    given, the encoding (`encoder.padding`) it was trained on."""
    meta = {SCALE_KEY: repr(float(scale)), "format": "pt"}
    return meta if padding is None else {**meta, PADDING_KEY: padding}


def adapter_padding(path: str | Path) -> str | None:
    """The encoding (`encoder.padding`) the adapter file at `path` was trained on, if it says."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get(PADDING_KEY)


def padding_mismatch(path: str | Path, padding: str) -> str | None:
    """Why the adapter file at `path` does not fit an encoder run with `padding`: it names the encoding
    it was trained on and that is another; None when it fits or does not say."""
    trained = adapter_padding(path)
    if trained is None or trained == padding:
        return None
    return (
        f"bridge.adapter {path} was trained on the encoder.padding={trained} encoding but the encoder runs "
        f"{padding}: the decoder hears it less well (set bridge.adapter to an adapter trained on {padding})"
    )
