"""Tiny random models (speechllm.model.tiny), built once per session in temporary directories; no network."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) with a byte-level tokenizer, saved as a Hugging Face directory."""
    from speechllm.model.tiny import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    """A random Whisper (d_model 64, 2 layers) saved as a Hugging Face directory."""
    from speechllm.model.tiny import save_tiny_whisper

    return save_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture()
def tiny_config(tiny_llm_dir, tiny_whisper_dir):
    """A SpeechLLMConfig whose encoder and LLM are the tiny checkpoints above."""
    from speechllm.model.tiny import tiny_speech_llm_config

    return tiny_speech_llm_config(tiny_llm_dir, tiny_whisper_dir)


@pytest.fixture()
def tiny_model(tiny_config):
    from speechllm.model import build_speech_llm

    torch.manual_seed(2)
    return build_speech_llm(tiny_config).eval()


@pytest.fixture()
def tone():
    """Deterministic test audio: a 1.3 s chirp plus noise at 16 kHz."""
    import numpy as np

    def make(seconds: float = 1.3, seed: int = 0):
        t = np.arange(int(seconds * 16000)) / 16000
        rng = np.random.default_rng(seed)
        return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)

    return make


class LLMCalls:
    """A forward pre-hook on the LLM: records (rows, positions, is_prefill) of every call, optionally
    sleeps (so a test can act while a request runs) and runs `on_call(n)` on the worker thread."""

    def __init__(self, model, delay: float = 0.0, on_call=None) -> None:
        self.calls: list[tuple[int, int, bool]] = []
        self.delay = delay
        self.on_call = on_call
        self._hook = model.llm.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs) -> None:
        x = kwargs.get("inputs_embeds")
        prefill = x is not None
        shape = x.shape if prefill else kwargs["input_ids"].shape
        self.calls.append((int(shape[0]), int(shape[1]), prefill))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        if self.delay:
            time.sleep(self.delay)

    def decode_rows(self) -> list[int]:
        return [rows for rows, _, prefill in self.calls if not prefill]

    def remove(self) -> None:
        self._hook.remove()


def wait_until(predicate, seconds: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)
