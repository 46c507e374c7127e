"""Loaders for the weight formats we read: CTranslate2 and Hugging Face Whisper, HF and GGUF LLMs."""

from speechllm.weights.errors import WeightsError

__all__ = ["WeightsError"]
