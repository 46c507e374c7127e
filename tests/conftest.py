"""Tiny random models (speechllm.model.tiny), built once per session in temporary directories; no network."""

from __future__ import annotations

import json
import os
import shutil
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


def convert_tiny_whisper(root: Path, decoder_scale: float = 1.0) -> dict:
    """A tiny random HF Whisper (with a word-level tokenizer, which the converter needs) under `root`,
    converted by CT2 to float32 and int8 (each with the tokenizer.json our decoder reads next to it).
    `decoder_scale` multiplies the decoder's (tied) token embeddings: its logits then have margins
    that no difference of summation order between two runtimes can flip."""
    import ctranslate2
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    hf_dir = root / "hf_whisper"
    # Laid out as Whisper's: text tokens, then the specials, <|notimestamps|> last before the timestamps.
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
    words = [f"w{i}" for i in range(40)]
    stamps = [f"<|{0.02 * i:.2f}|>" for i in range(60 - len(words) - len(specials))]
    vocab = {tok: i for i, tok in enumerate(words + specials + stamps)}  # the model's 60 tokens
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0")),
        unk_token="w0",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    config = WhisperConfig(
        vocab_size=60,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=vocab["<|startoftranscript|>"],
        pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight.mul_(decoder_scale)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    out = {"hf_model": model, "ctranslate2": ctranslate2}
    for quantization in ("float32", "int8"):
        ct2_dir = root / f"ct2_{quantization}"
        ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
            str(ct2_dir), quantization=quantization, force=True
        )
        shutil.copy(hf_dir / "tokenizer.json", ct2_dir / "tokenizer.json")
        settings = json.loads((ct2_dir / "config.json").read_text())  # the converter's are a real Whisper's ids
        settings |= {"suppress_ids": [vocab["w1"]], "suppress_ids_begin": [vocab["<|endoftext|>"]]}
        (ct2_dir / "config.json").write_text(json.dumps(settings))
        out[quantization] = ct2_dir
    return out


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """`convert_tiny_whisper` once per session (needs ctranslate2)."""
    pytest.importorskip("ctranslate2")
    return convert_tiny_whisper(tmp_path_factory.mktemp("converted"))
