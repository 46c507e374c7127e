"""Tiny random models: plain builder functions with the numbers written out, shared by the tests
(tests/conftest.py), `speechllm bench --tiny` and benchmarks/load_test.py --tiny. They exercise the
machinery (shapes, caches, batching, serving), never a model's quality; nothing is downloaded.

    llm = save_tiny_llm(tmp / "llm")            # a 2-layer Llama, hidden 64, one token per byte
    whisper = save_tiny_whisper(tmp / "whisper")  # a 2-layer Whisper encoder (1-layer decoder), d_model 64
    model = build_speech_llm(tiny_speech_llm_config(llm, whisper))
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from speechllm.config import AdaptorConfig, EncoderConfig, LLMConfig, SpeechLLMConfig
from speechllm.model.builders import build_speech_llm
from speechllm.model.checkpoint import save_pretrained

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's chat template, without its default system prompt."""


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (one token per byte) and ChatML special tokens:
    ids 0 <unk>, 1 <|endoftext|> (pad), 2 <|im_start|> (bos), 3 <|im_end|> (eos), then the 256 bytes."""
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
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


def save_tiny_llm(directory: str | Path, max_positions: int = 1024, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads, tied embeddings) with `tiny_tokenizer`,
    saved as a Hugging Face directory; returns the directory."""
    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = 3
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_whisper(directory: str | Path, seed: int = 1) -> Path:
    """A random Whisper (80 mels, d_model 64, 2 encoder layers, 1 decoder layer, 4 heads), saved as a
    Hugging Face directory; returns the directory."""
    directory = Path(directory)
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
    torch.manual_seed(seed)
    WhisperForConditionalGeneration(config).save_pretrained(directory)
    return directory


def tiny_speech_llm_config(llm_dir: str | Path, whisper_dir: str | Path) -> SpeechLLMConfig:
    """The default speech LLM layout on the tiny parts: stack compressor, an MLP adaptor 32 wide."""
    return SpeechLLMConfig(
        encoder=EncoderConfig(source=str(whisper_dir)),
        llm=LLMConfig(source=str(llm_dir)),
        adaptor=AdaptorConfig(kind="mlp", hidden_dim=32),
    )


def save_tiny_speech_llm(directory: str | Path, seed: int = 2) -> Path:
    """The tiny LLM and Whisper under `directory` (llm/, whisper/) and a speechllm checkpoint of the
    speech LLM built on them (model/); returns the checkpoint's directory."""
    directory = Path(directory)
    config = tiny_speech_llm_config(save_tiny_llm(directory / "llm"), save_tiny_whisper(directory / "whisper"))
    torch.manual_seed(seed)
    return save_pretrained(build_speech_llm(config), directory / "model")
