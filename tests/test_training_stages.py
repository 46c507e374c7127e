"""Every training stage for 3 steps on tiny random models: checkpoints load and resume; trainable sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechllm.data.audio import save_wav
from speechllm.data.encoding import encoder_fn
from speechllm.data.feature_cache import FeatureCache, encode_manifest
from speechllm.data.manifest import Sample, write_manifest
from speechllm.inference.generation import GenerationConfig, generate
from speechllm.model import from_pretrained, part_of
from speechllm.training.stages import STAGES, StageModel, ctc_greedy
from speechllm.training.train import load_train_config, main, setup

WORDS = ["red apple", "blue sky", "green tea", "tall tree", "old road", "warm sun"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_whisper_dir):
    """Six ASR and six instruction samples (tones standing in for speech) with a feature cache."""
    from speechllm.config import EncoderConfig
    from speechllm.model.encoder import load_whisper_encoder

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    asr, instruct = [], []
    for i, text in enumerate(WORDS):
        wav = root / f"a{i}.wav"
        save_wav(wav, (0.2 * rng.standard_normal(16000 + 800 * i)).astype(np.float32))
        turn = [{"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "text", "text": "Transcribe."}]}]
        asr.append(Sample(id=f"asr{i}", task="asr", audio=[str(wav)], messages=turn, target=text))
        q = [{"role": "user", "content": [{"type": "audio", "audio": 0}]}]
        instruct.append(
            Sample(id=f"q{i}", task="instruct", audio=[str(wav)], messages=q, target="yes", meta={"question": text})
        )
    write_manifest(root / "asr.jsonl", asr)
    write_manifest(root / "instruct.jsonl", instruct)
    encoder = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir)))
    with FeatureCache(root / "cache", encoder.fingerprint()) as cache:
        encode_manifest(asr + instruct, cache, encoder_fn(encoder), batch_size=4, progress=False)
    return root


def stage_config(stage, root, tmp_path, tiny_llm_dir, tiny_whisper_dir, extra=()):
    manifest = "instruct.jsonl" if stage in ("instruct", "distill") else "asr.jsonl"
    overrides = [
        f"stage={stage}",
        f"model.encoder.source={tiny_whisper_dir}",
        f"model.llm.source={tiny_llm_dir}",
        "model.adaptor.hidden_dim=16",
        f"data.train_manifest={root / manifest}",
        f"data.dev_manifest={root / manifest}",
        f"data.feature_cache={root / 'cache'}",
        "data.eval_samples=2",
        "batch_size=2",
        f"loop.out_dir={tmp_path / stage}",
        "loop.max_steps=3",
        "loop.warmup_steps=1",
        "loop.eval_every=3",
        "loop.save_every=2",
        "loop.log_every=1",
        "loop.progress=false",
        "eval_max_new_tokens=4",
        *extra,
    ]
    if stage == "ctc_head":
        overrides += ["model.compressor.kind=ctc"]
    if stage == "instruct":
        overrides += ["model.lora.enabled=true", "model.lora.r=2"]
    return load_train_config(None, overrides)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_trains_saves_and_resumes(stage, tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir):
    config = stage_config(stage, tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir)
    stage_model, _, _ = setup(config)
    before = {n: p.detach().clone() for n, p in stage_model.named_parameters() if p.requires_grad}
    metrics = main(config)
    assert np.isfinite(metrics["loss"])
    out = tmp_path / stage
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("eval/") for line in lines for k in line)
    model = from_pretrained(out / "model")
    trained = dict(model.named_parameters())
    changed = [n for n, v in before.items() if n.startswith("model.") and not torch.equal(v, trained[n[6:]])]
    assert changed, "no trainable weight changed"
    assert {part_of(n[6:]) for n in changed} <= set(STAGES[stage])
    # Resume to a later step continues from the checkpoint rather than starting over.
    config.loop.max_steps = 4
    resumed = main(config, resume=True)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps[-1] == 4 and steps.count(3) == 1 and np.isfinite(resumed["loss"])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_trainable_set_is_what_the_stage_says(stage, tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir):
    config = stage_config(stage, tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir)
    stage_model, _, _ = setup(config)
    parts = {part_of(n[6:]) for n, p in stage_model.named_parameters() if p.requires_grad and n.startswith("model.")}
    present = {part_of(n[6:]) for n, _ in stage_model.named_parameters() if n.startswith("model.")}
    assert parts == set(STAGES[stage]) & present
    assert not any(p.requires_grad for p in stage_model.model.encoder.parameters())
    llm_trainable = {n for n, p in stage_model.model.llm.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in llm_trainable) and bool(llm_trainable) == (stage == "instruct")


def test_distill_leaves_text_answers_unchanged(tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir):
    config = stage_config("distill", tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir)
    stage_model, _, _ = setup(config)
    prompt = [[{"role": "user", "content": "a typed question"}]]
    before = generate(stage_model.model, prompt, GenerationConfig(max_new_tokens=6))
    main(config)
    after = generate(from_pretrained(tmp_path / "distill" / "model"), prompt, GenerationConfig(max_new_tokens=6))
    assert before == after


def test_ctc_greedy_collapses_repeats_and_drops_blanks():
    log_probs = torch.full((1, 7, 4), -10.0)
    for t, label in enumerate([3, 1, 1, 3, 2, 2, 1]):  # 3 is blank
        log_probs[0, t, label] = 0.0
    assert ctc_greedy(log_probs, torch.tensor([7]), blank=3) == [[1, 2, 1]]
    assert ctc_greedy(log_probs, torch.tensor([3]), blank=3) == [[1]]


def test_stage_errors(tiny_model):
    with pytest.raises(ValueError, match="unknown stage 'warp'"):
        StageModel(tiny_model, "warp")
    with pytest.raises(ValueError, match=r"needs compressor\.kind 'ctc'"):
        StageModel(tiny_model, "ctc_head")
    with pytest.raises(ValueError, match=r"lora\.enabled"):
        StageModel(tiny_model, "instruct")
    with pytest.raises(ValueError, match="stage must be one of"):
        load_train_config(None, ["stage=nope"])


def test_export_writes_the_latest_checkpoint_as_a_model(tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir):
    from speechllm.training.train import export

    config = stage_config("asr", tiny_data, tmp_path, tiny_llm_dir, tiny_whisper_dir, ["loop.max_steps=2"])
    main(config)
    trained = from_pretrained(tmp_path / "asr" / "model")
    (tmp_path / "asr" / "model" / "model.safetensors").unlink()
    exported = from_pretrained(export(config))
    for (name, a), (_, b) in zip(trained.named_parameters(), exported.named_parameters()):
        assert torch.equal(a, b), name
