"""Whisper's text decoder and its tokenizer from a CTranslate2 checkpoint (the bundled ones included).

CTranslate2 stores the decoder as `decoder/layer_i/{self_attention,attention,ffn}/...`: self-attention
fuses q, k, v into `linear_0`; cross-attention keeps q in `linear_0`, fuses k, v in `linear_1`, and
has its output in `linear_2`. The special tokens come from the checkpoint's `config.json`
(`suppress_ids`, `suppress_ids_begin`, `lang_ids`) and `tokenizer.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from speechllm.weights.errors import WeightsError
from speechllm.weights.whisper import ct2_model_files, ct2_stack_state_dict, ct2_tensor, read_ct2_model


def ct2_decoder_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Map CTranslate2 Whisper decoder variables onto `WhisperTextDecoder` names; also its architecture."""
    if "decoder/embeddings/weight" not in variables:
        raise WeightsError("not a CTranslate2 Whisper model: no variable 'decoder/embeddings/weight'")

    def t(name: str) -> Tensor:
        return ct2_tensor(variables, name)

    sd, n_layers = ct2_stack_state_dict(variables, "decoder")
    sd["embed_tokens.weight"] = t("decoder/embeddings/weight")
    for i in range(n_layers):
        src, dst = f"decoder/layer_{i}", f"layers.{i}"
        # Cross-attention: q in linear_0, k and v fused in linear_1 (2D, D -> 2 x (D, D)), output in linear_2.
        xk_w, xv_w = t(f"{src}/attention/linear_1/weight").chunk(2, dim=0)
        _xk_b, xv_b = t(f"{src}/attention/linear_1/bias").chunk(2, dim=0)  # the key's bias is zeros
        sd.update(
            {
                f"{dst}.encoder_attn.q_proj.weight": t(f"{src}/attention/linear_0/weight"),
                f"{dst}.encoder_attn.q_proj.bias": t(f"{src}/attention/linear_0/bias"),
                f"{dst}.encoder_attn.k_proj.weight": xk_w,
                f"{dst}.encoder_attn.v_proj.weight": xv_w,
                f"{dst}.encoder_attn.v_proj.bias": xv_b,
                f"{dst}.encoder_attn.out_proj.weight": t(f"{src}/attention/linear_2/weight"),
                f"{dst}.encoder_attn.out_proj.bias": t(f"{src}/attention/linear_2/bias"),
                f"{dst}.encoder_attn_layer_norm.weight": t(f"{src}/attention/layer_norm/gamma"),
                f"{dst}.encoder_attn_layer_norm.bias": t(f"{src}/attention/layer_norm/beta"),
            }
        )
    arch = {
        "vocab_size": sd["embed_tokens.weight"].shape[0],
        "d_model": sd["embed_tokens.weight"].shape[1],
        "n_layers": n_layers,
        "n_heads": int(np.asarray(variables["decoder/num_heads"]).reshape(-1)[0]),
        "ffn_dim": sd["layers.0.fc1.weight"].shape[0],
        "max_positions": sd["embed_positions.weight"].shape[0],
    }
    return sd, arch


ENGLISH_ONLY_VOCAB = 51864
"""Whisper's English-only checkpoints (*.en) have this vocabulary; multilingual ones one more token."""


def _special_tokens(directory: Path, tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Prompt, end of text and suppressed tokens from a CTranslate2 Whisper dir's config + tokenizer."""

    def token(text: str) -> int:
        found = tokenizer.token_to_id(text)
        if found is None:
            raise WeightsError(f"{directory}/tokenizer.json has no special token {text!r}")
        return int(found)

    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    prompt = [token("<|startoftranscript|>")]
    # *.en checkpoints list language ids in config.json too, but were never trained with them.
    if vocab_size > ENGLISH_ONLY_VOCAB:  # multilingual: English, transcribe
        prompt += [token("<|en|>"), token("<|transcribe|>")]
    prompt.append(token("<|notimestamps|>"))
    return {
        "prompt": prompt,
        "specials_from": prompt[0],  # <|startoftranscript|>: every id from it on is a special token
        "eot": token("<|endoftext|>"),
        "suppress": [int(i) for i in config.get("suppress_ids") or []],  # a converter may write null
        "suppress_begin": [int(i) for i in config.get("suppress_ids_begin") or [220, token("<|endoftext|>")]],
    }


def tokenizer_file(directory: Path) -> Path:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise WeightsError(f"{directory}: a Whisper decoder needs its tokenizer.json next to the weights")
    return path


def metadata_dir(directory: Path, parts: list[Path]) -> Path:
    """Where a checkpoint's tokenizer.json and config.json are: `directory`, or the folder of one of
    its model.bin parts (Whisper base, shipped in two packages, keeps them by its second part)."""
    return next((d for d in (directory, *(p.parent for p in parts)) if (d / "tokenizer.json").is_file()), directory)


def read_whisper_decoder(source: str) -> tuple[dict[str, Tensor], dict[str, Any], Any]:
    """The text decoder of the CTranslate2 Whisper checkpoint `source` names: its state dict (our
    names), its architecture and special tokens (`DecoderArch` fields), and its `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    directory, parts = ct2_model_files(source)
    if not parts:
        raise WeightsError(f"{directory}: the Whisper decoder loads from CTranslate2 checkpoints (model.bin) only")
    sd, arch = ct2_decoder_state_dict(read_ct2_model(parts))
    here = metadata_dir(directory, parts)
    tokenizer = Tokenizer.from_file(str(tokenizer_file(here)))
    return sd, {**arch, **_special_tokens(here, tokenizer, arch["vocab_size"])}, tokenizer


CT2_VOCABULARIES = ("vocabulary.json", "vocabulary.txt")
"""The token lists CTranslate2 reads next to a converted model's model.bin (either one, every token
of the model's vocabulary: timestamps included, which tokenizer.json leaves out)."""


def read_ct2_whisper(source: str, whole: bool = False) -> tuple[str, dict[str, bytes] | None, dict[str, Any], Any]:
    """What `ctranslate2.models.Whisper` loads for the CTranslate2 Whisper checkpoint `source` names,
    without reading its weights: the model path, and for a model.bin split in parts (Whisper base,
    shipped in two packages) or with `whole` its files in memory (model.bin, its parts joined, its
    config and vocabulary; else None); its vocabulary size and special tokens (`DecoderArch`
    fields); and its `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    directory, parts = ct2_model_files(source)
    if not parts:
        raise WeightsError(
            f"{directory}: bridge.engine 'ctranslate2' needs a CTranslate2 checkpoint (model.bin); "
            "convert a Hugging Face Whisper with ct2-transformers-converter, or use bridge.engine 'torch'"
        )
    here = metadata_dir(directory, parts)
    tokenizer = Tokenizer.from_file(str(tokenizer_file(here)))
    vocabulary = next((here / name for name in CT2_VOCABULARIES if (here / name).is_file()), None)
    if vocabulary is None or not (here / "config.json").is_file():
        raise WeightsError(f"{here}: CTranslate2 needs config.json and one of {CT2_VOCABULARIES} next to model.bin")
    text = vocabulary.read_text(encoding="utf-8")
    size = len(json.loads(text)) if vocabulary.suffix == ".json" else len(text.splitlines())
    arch = {"vocab_size": size, **_special_tokens(here, tokenizer, size)}
    if parts == [directory / "model.bin"] and not whole:
        return str(directory), None, arch, tokenizer
    files = {"model.bin": b"".join(p.read_bytes() for p in parts)}
    files |= {path.name: path.read_bytes() for path in (here / "config.json", vocabulary)}
    return "", files, arch, tokenizer
