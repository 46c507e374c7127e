"""Tiny random models, built once per session in temporary directories; no network, no downloads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) with a byte-level tokenizer, saved as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny_llm")
    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = 3
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    """A random Whisper (d_model 64, 2 layers) saved as a Hugging Face directory."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    directory = tmp_path_factory.mktemp("tiny_whisper")
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    torch.manual_seed(1)
    WhisperForConditionalGeneration(config).save_pretrained(directory)
    return directory


@pytest.fixture()
def tiny_config(tiny_llm_dir, tiny_whisper_dir):
    """A SpeechLLMConfig whose encoder and LLM are the tiny checkpoints above."""
    from speechllm.config import AdaptorConfig, EncoderConfig, LLMConfig, SpeechLLMConfig

    return SpeechLLMConfig(
        encoder=EncoderConfig(source=str(tiny_whisper_dir)),
        llm=LLMConfig(source=str(tiny_llm_dir)),
        adaptor=AdaptorConfig(kind="mlp", hidden_dim=32),
    )


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
