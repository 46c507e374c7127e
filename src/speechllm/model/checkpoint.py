"""Save and load a SpeechLLM: a readable config plus only the weights that are not elsewhere.

A checkpoint directory holds `config.yaml` (the whole SpeechLLMConfig, including where the frozen
encoder and LLM come from) and `model.safetensors` (compressor, adaptor, LoRA, layer weights, and
any part that was set to train), and the recognizer's adapter if it has one
(`recognizer_adapter.safetensors`, `bridge.adapter`). Writing goes to a temporary directory first and is renamed into
place, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from speechllm.atomic import atomic_directory
from speechllm.config import load_config, save_config
from speechllm.model.speech_llm import SpeechLLM, part_of
from speechllm.weights.errors import WeightsError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "recognizer_adapter.safetensors"
"""Where a checkpoint keeps its recognizer's adapter (`bridge.adapter`)."""


def save_pretrained(model: SpeechLLM, directory: str | Path) -> Path:
    """Write `model`'s config and weights to `directory`; the recognizer's adapter file
    (`bridge.adapter`), if any, is copied beside them and named relative to them."""
    directory = Path(directory)
    keep = model.saved_parameter_names()
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if n in keep}
    config, adapter = model.config, model.config.bridge.adapter
    with atomic_directory(directory) as tmp:
        if adapter is not None:
            shutil.copyfile(adapter, tmp / ADAPTER_FILE)
            config = dataclasses.replace(config, bridge=dataclasses.replace(config.bridge, adapter=ADAPTER_FILE))
        save_config(config, tmp / CONFIG_FILE)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "speechllm": "1"})
    return directory


def load_weights(model: SpeechLLM, path: Path, *, require_owned: bool = True) -> list[str]:
    """Load a checkpoint's tensors into `model` and return their names.

    With `require_owned`, every owned or trainable parameter must be covered (a full checkpoint);
    without, parts the file lacks keep their current values (a previous stage's weights). Tensors of
    parts the model's config never runs (`SpeechLLM.unused_parts`) are not read.
    """
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types on corrupt files
        raise WeightsError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise WeightsError(f"{path}: weights {unknown[:5]} do not exist in the model built from its config")
    missing = sorted(n for n in model.saved_parameter_names() if n not in tensors)
    if require_owned and missing:
        raise WeightsError(f"{path}: lacks weights for {missing[:5]} (parts {sorted({part_of(n) for n in missing})})")
    unused = model.unused_parts()  # e.g. the default's adaptor under the whisper bridge: kept in the file, not read
    loaded = {n: v for n, v in tensors.items() if part_of(n) not in unused}
    with torch.no_grad():
        for name, value in loaded.items():
            if params[name].shape != value.shape:
                raise WeightsError(
                    f"{path}: {name} has shape {tuple(value.shape)}, model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(value)
    return sorted(loaded)


def from_pretrained(directory: str | Path, overrides: list[str] | None = None) -> SpeechLLM:
    """Rebuild a saved SpeechLLM: frozen parts from their sources, the rest from the checkpoint."""
    from speechllm.model.builders import build_speech_llm

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise WeightsError(f"{directory}: not a speechllm checkpoint (no {CONFIG_FILE})")
    if not (directory / WEIGHTS_FILE).is_file():
        raise WeightsError(f"{directory}: checkpoint has a config but no {WEIGHTS_FILE}")
    config = load_config(directory / CONFIG_FILE, overrides)
    adapter = config.bridge.adapter
    if adapter is not None and not Path(adapter).is_absolute():  # named relative to the checkpoint
        config.bridge.adapter = str(directory.resolve() / adapter)
    model = build_speech_llm(config)
    load_weights(model, directory / WEIGHTS_FILE)
    return model.eval()
