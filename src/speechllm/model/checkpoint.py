"""Save and load a SpeechLLM: a readable config plus only the weights that are not elsewhere.

A checkpoint directory holds `config.yaml` (the whole SpeechLLMConfig, including where the frozen
encoder and LLM come from) and `model.safetensors` (compressor, adaptor, LoRA, layer weights, and
any part that was set to train). Writing goes to a temporary directory first and is renamed into
place, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from speechllm.config import load_config, save_config
from speechllm.model.speech_llm import SpeechLLM, part_of
from speechllm.weights.errors import WeightsError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"


def write_directory(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling of `directory` with `write(tmp)`, then rename it into place: a
    reader sees the old folder or the whole new one, never a half-written one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    try:
        write(tmp)
        for f in tmp.iterdir():
            f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_pretrained(model: SpeechLLM, directory: str | Path) -> Path:
    keep = model.saved_parameter_names()
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if n in keep}

    def write(tmp: Path) -> None:
        save_config(model.config, tmp / CONFIG_FILE)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "speechllm": "1"})

    return write_directory(directory, write)


def load_weights(model: SpeechLLM, path: Path, *, require_owned: bool = True) -> list[str]:
    """Load a checkpoint's tensors into `model` and return their names.

    With `require_owned`, every owned or trainable parameter must be covered (a full checkpoint);
    without, parts the file lacks keep their current values (a previous stage's weights).
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
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise WeightsError(
                    f"{path}: {name} has shape {tuple(value.shape)}, model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(value)
    return sorted(tensors)


def from_pretrained(directory: str | Path, overrides: list[str] | None = None) -> SpeechLLM:
    """Rebuild a saved SpeechLLM: frozen parts from their sources, the rest from the checkpoint."""
    from speechllm.model.builders import build_speech_llm

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise WeightsError(f"{directory}: not a speechllm checkpoint (no {CONFIG_FILE})")
    if not (directory / WEIGHTS_FILE).is_file():
        raise WeightsError(f"{directory}: checkpoint has a config but no {WEIGHTS_FILE}")
    model = build_speech_llm(load_config(directory / CONFIG_FILE, overrides))
    load_weights(model, directory / WEIGHTS_FILE)
    return model.eval()
