"""The embedded default model: Whisper tiny.en + SmolLM2-135M-Instruct + the adaptor we ship."""

from __future__ import annotations

import logging
from pathlib import Path

from speechllm.config import SpeechLLMConfig
from speechllm.model.checkpoint import from_pretrained
from speechllm.model.speech_llm import SpeechLLM

log = logging.getLogger(__name__)

# Trained weights shipped inside the package (written by the training recipe, see README).
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "default"
DEFAULT_SPEECH = DEFAULT_CHECKPOINT / "speech"
"""The default speech output (loaded by the CLI): the answer's text spoken by Piper's `joe` voice."""
KMEANS_SPEECH = DEFAULT_CHECKPOINT / "speech_kmeans"
"""The k-means speech output (decoder + unit vocoder trained by recipes/default_speech.sh): an option."""


def load_model(model_dir: str | Path | None = None, overrides: list[str] | None = None) -> SpeechLLM:
    """The model in `model_dir`, or the embedded default when None; `overrides` (`key.path=value`)
    change its config before it is built (e.g. `bridge.beam_size=1`)."""
    if model_dir is not None:
        return from_pretrained(model_dir, overrides)
    if (DEFAULT_CHECKPOINT / "config.yaml").is_file():
        return from_pretrained(DEFAULT_CHECKPOINT, overrides)
    if overrides:
        raise ValueError(f"no embedded default checkpoint ({DEFAULT_CHECKPOINT}) to apply {overrides} to")
    from speechllm.model.builders import build_speech_llm

    log.warning(
        "no trained default adaptor is shipped in this build (%s is missing): speech input will not be "
        "understood until one is trained with `speechllm train`; text prompts work as the plain LLM",
        DEFAULT_CHECKPOINT,
    )
    return build_speech_llm(SpeechLLMConfig()).eval()
