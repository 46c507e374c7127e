"""Build a SpeechLLM from its config: each part from where the config says it lives."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import cast

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from speechllm.config import LoraConfig, SpeechLLMConfig
from speechllm.model.adaptor import Adaptor
from speechllm.model.compressor import build_compressor
from speechllm.model.encoder import WhisperEncoder
from speechllm.model.features import log_mel_for
from speechllm.model.merge import Hearing
from speechllm.model.processor import SpeechLLMProcessor
from speechllm.model.speech_llm import SpeechLLM
from speechllm.model.transcriber import Transcriber
from speechllm.model.whisper_decoder import load_whisper_decoder

log = logging.getLogger(__name__)


def add_lora(llm: PreTrainedModel, config: LoraConfig) -> PreTrainedModel:
    """Inject LoRA adapters (peft) into the LLM's attention projections, in place."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    names = {n.rsplit(".", 1)[-1] for n, _ in llm.named_modules()}
    missing = [t for t in config.target_modules if t not in names]
    if missing:
        raise ValueError(f"lora.target_modules {missing} not found in the LLM (it has e.g. {sorted(names)[:12]})")
    peft_config = PeftLoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(config.target_modules)
    )
    return cast(PreTrainedModel, inject_adapter_in_model(peft_config, llm))


def assemble(
    config: SpeechLLMConfig,
    encoder: WhisperEncoder,
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    recognizer: Transcriber | None = None,
) -> SpeechLLM:
    """Wrap a loaded encoder and LLM (and the Whisper text decoder of a whisper bridge) with a fresh
    compressor and adaptor (and LoRA if configured)."""
    config.encoder = encoder.config  # the checkpoint's architecture, for the saved config
    processor = SpeechLLMProcessor(
        tokenizer,
        log_mel_for(encoder.config),
        speech_token=config.speech_token,
        system_prompt=config.system_prompt,
    )
    compressor = build_compressor(config.compressor, encoder.dim, llm.config.vocab_size)
    adaptor = Adaptor(config.adaptor, compressor.output_dim(encoder.dim), llm.config.hidden_size)
    if config.lora.enabled:
        llm = add_lora(llm, config.lora)
    return SpeechLLM(config, encoder, compressor, adaptor, llm, processor, recognizer)


def load_recognizer(config: SpeechLLMConfig) -> Transcriber:
    """The `whisper` recognizer of the encoder checkpoint, run by `bridge.engine`."""
    bridge = config.bridge
    if bridge.adapter is not None:
        from speechllm.weights.decoder_adapter import padding_mismatch

        if Path(bridge.adapter).is_file() and (why := padding_mismatch(bridge.adapter, config.encoder.padding)):
            log.warning(why)
    if bridge.engine == "ctranslate2":
        from speechllm.model.ct2_decoder import load_ct2_decoder

        return load_ct2_decoder(config.encoder.source, bridge.compute_type, bridge.threads, bridge.adapter)
    return load_whisper_decoder(config.encoder.source, bridge.precision, bridge.logits, bridge.adapter)


def build_speech_llm(config: SpeechLLMConfig) -> SpeechLLM:
    """Load the encoder and LLM named by the config and assemble a SpeechLLM (new adaptor weights)."""
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.weights.llm import load_llm

    encoder = load_whisper_encoder(config.encoder)
    llm, tokenizer = load_llm(config.llm)
    recognizer = None
    if config.bridge.reads_whisper:
        recognizer = load_recognizer(config)
    model = assemble(config, encoder, llm, tokenizer, recognizer)
    if config.bridge.merge_with is not None:
        model.second = load_second_hearing(config)
    return model


def load_second_hearing(config: SpeechLLMConfig) -> Hearing:
    """`bridge.merge_with`'s encoder (the checkpoint's own architecture, the first's padding) and its
    text decoder as pretrained, run as the first recognizer is."""
    from speechllm.model.encoder import load_whisper_encoder

    source = config.bridge.merge_with
    assert source is not None
    encoder_config = dataclasses.replace(config.encoder, source=source, layer=-1)
    second = dataclasses.replace(
        config, encoder=encoder_config, bridge=dataclasses.replace(config.bridge, adapter=None)
    )
    return Hearing(load_whisper_encoder(encoder_config).eval(), load_recognizer(second))
