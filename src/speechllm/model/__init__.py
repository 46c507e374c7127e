"""Model parts and the composed SpeechLLM."""

from speechllm.model.adaptor import Adaptor
from speechllm.model.builders import assemble, build_speech_llm
from speechllm.model.checkpoint import from_pretrained, save_pretrained
from speechllm.model.compressor import CTCCompressor, PoolCompressor, StackCompressor, build_compressor
from speechllm.model.encoder import WhisperEncoder
from speechllm.model.features import LogMel
from speechllm.model.processor import SpeechLLMProcessor
from speechllm.model.speech_llm import SpeechLLM, part_of

__all__ = [
    "Adaptor",
    "CTCCompressor",
    "LogMel",
    "PoolCompressor",
    "SpeechLLM",
    "SpeechLLMProcessor",
    "StackCompressor",
    "WhisperEncoder",
    "assemble",
    "build_compressor",
    "build_speech_llm",
    "from_pretrained",
    "part_of",
    "save_pretrained",
]
