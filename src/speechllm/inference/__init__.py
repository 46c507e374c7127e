"""Generation from a SpeechLLM: batched, with a KV cache, streaming token by token."""

from speechllm.inference.generation import GenerationConfig, generate, stream_generate

__all__ = ["GenerationConfig", "generate", "stream_generate"]
