"""speechllm bench: figures and ratios, and a smoke run on tiny random models."""

from __future__ import annotations

import importlib.util
import json

import pytest

from speechllm.bench import (
    METRICS,
    BenchConfig,
    _model_config,
    per_round_ratio,
    pooled,
    ratio,
    shared_llm_overrides,
    system_figures,
)
from speechllm.cli import main


def test_system_figures_and_ratio_on_known_rows():
    rows = [
        {"ttft_s": 0.5, "latency_s": 1.5, "steps": 11, "audio_s": 4.0},
        {"ttft_s": 1.5, "latency_s": 2.5, "steps": 6, "audio_s": 4.0},
    ]
    f = system_figures(rows, peak_rss_mb=100.0)
    assert f == {"ttft_s": 1.0, "latency_s": 2.0, "tokens_per_s": 15 / 2.0, "rtf": 0.5, "peak_rss_mb": 100.0}
    assert system_figures([{**rows[0], "steps": 1}], 1.0)["tokens_per_s"] is None  # one step: no decode rate
    assert ratio(1.0, 4.0) == 0.25 and ratio(None, 4.0) is None and ratio(1.0, 0.0) is None


def test_rounds_pool_their_rows_and_keep_each_rounds_ratio():
    """Two rounds of each system: the figures read every row, each round its own ratio."""
    e2e = pooled([{"result": [{"ttft_s": 1.0}, {"ttft_s": 3.0}], "peak_rss_mb": 10.0, "threads": 2},
                  {"result": [{"ttft_s": 2.0}, {"ttft_s": 2.0}], "peak_rss_mb": 12.0, "threads": 2}])  # fmt: skip
    cascade = pooled([{"result": [{"ttft_s": 4.0}, {"ttft_s": 4.0}], "peak_rss_mb": 5.0, "threads": 2},
                      {"result": [{"ttft_s": 8.0}, {"ttft_s": 8.0}], "peak_rss_mb": 4.0, "threads": 2}])  # fmt: skip
    assert [r["round"] for r in e2e["result"]] == [0, 0, 1, 1] and e2e["peak_rss_mb"] == 12.0
    assert per_round_ratio(e2e["result"], cascade["result"], "ttft_s") == [0.5, 0.25]
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        BenchConfig(rounds=0)


@pytest.mark.slow
def test_bench_smoke_on_tiny_models(tmp_path, capsys):
    pytest.importorskip("espeakng_loader")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--tiny", "--n", "1", "--rounds", "2", "--max-new-tokens", "3", "--train-steps", "1",
               "--train-batch-size", "1", "--json", str(out), "--plots", str(tmp_path / "plots")])  # fmt: skip
    assert rc == 0
    figures = json.loads(out.read_text())
    assert figures["inputs"] == 1 and figures["e2e_ttft_s"] > 0 and figures["e2e_peak_rss_mb"] > 0
    assert figures["rounds"] == 2 and [r["round"] for r in figures["samples"]["e2e"]] == [0, 1]
    assert figures["e2e_ttft_s"] >= figures["e2e_speech_s"] > 0  # the speech part comes before the first token
    assert {"e2e_ttft_s", "cascade_ttft_s", "ttft_ratio", "e2e_peak_rss_mb", "cascade_peak_rss_mb"} <= set(figures)
    assert {"train_asr_samples_per_s", "train_instruct_samples_per_s", "train_ctc_head_samples_per_s"} <= set(figures)
    assert (tmp_path / "plots" / "e2e_vs_cascade.png").stat().st_size > 0
    assert (tmp_path / "plots" / "training_throughput.png").stat().st_size > 0
    if importlib.util.find_spec("faster_whisper") is None:
        assert figures["cascade_ttft_s"] is None and figures["ttft_ratio"] is None
        assert any("faster-whisper" in n for n in figures["notes"])
        return
    for metric, ratio_key in METRICS.items():
        e2e, cascade = figures[f"e2e_{metric}"], figures[f"cascade_{metric}"]
        if e2e is not None and cascade:
            assert figures[ratio_key] == pytest.approx(e2e / cascade)
    assert figures["cascade_ttft_s"] >= figures["cascade_asr_s"] > 0
    assert len(figures["ttft_ratio_per_round"]) == 2


def test_the_cascade_runs_the_llm_the_end_to_end_model_runs():
    """Overrides of the LLM or its prompt reach the cascade's LLM too; the rest stay the e2e model's."""
    given = ["bridge.beam_size=1", "llm.dtype=bfloat16", "system_prompt=Be brief.", "encoder.padding=tail"]
    shared = shared_llm_overrides(given)
    assert shared == ["llm.dtype=bfloat16", "system_prompt=Be brief."]
    config = _model_config(None, shared)
    assert (config.llm.dtype, config.system_prompt) == ("bfloat16", "Be brief.")
    assert config.bridge.beam_size == _model_config(None).bridge.beam_size  # not the cascade's business


def test_training_stages_time_a_whisper_bridge_default_as_the_connector_they_train(tiny_config):
    """The shipped default's recognizer is Whisper's decoder, which no stage trains: each stage's
    model assembles without one (the bench's train worker crashed on the default before)."""
    import dataclasses

    from speechllm.bench import _stage_config
    from speechllm.model.builders import assemble
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.training.stages import STAGES
    from speechllm.weights.llm import load_llm

    bridge = dataclasses.replace(tiny_config.bridge, mode="top1", recognizer="whisper")
    window = dataclasses.replace(tiny_config.encoder, padding="30s")
    base = dataclasses.replace(tiny_config, bridge=bridge, encoder=window)
    encoder = load_whisper_encoder(base.encoder)
    for stage in sorted(STAGES, key=lambda s: s == "instruct"):  # LoRA goes into the shared LLM: last
        llm, tokenizer = load_llm(base.llm)
        config = _stage_config(base, stage)
        model = assemble(config, encoder, llm, tokenizer)
        assert (model.config.bridge.mode, model.config.bridge.recognizer) == ("continuous", "ctc"), stage
        assert model.config.lora.enabled == (stage == "instruct")
    assert base.bridge.recognizer == "whisper"  # the given config is left as it was
