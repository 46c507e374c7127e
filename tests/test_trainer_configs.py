"""The trainers' typed configs: built by the one loader (YAML + key.path=value overrides), called
from Python with a config object, and a wrong override named with the type it needed."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from speechllm.config import field_default, load_yaml
from speechllm.data.manifest import Sample, write_manifest
from speechllm.speech_out.decoder import SpeechDecoder
from speechllm.speech_out.train_config import DecoderTrainConfig, DurationTrainConfig, VocoderSynthConfig
from speechllm.training.loop_config import LoopConfig


def test_the_decoder_trains_from_python_on_kmeans_units(tiny_model, tmp_path, monkeypatch):
    from speechllm.speech_out.train_decoder import train

    monkeypatch.setattr("speechllm.defaults.load_model", lambda _=None: tiny_model)
    answers = ["Yes.", "No way.", "Go on then."]
    say = [{"role": "user", "content": "Say it."}]
    samples = [
        Sample(id=f"a{i}", task="speech", audio=[], messages=say, target=text, units=[i % 5, 5, 5, 6, (i + 2) % 7])
        for i, text in enumerate(answers)
    ]
    write_manifest(tmp_path / "units.jsonl", samples)
    config = DecoderTrainConfig(
        units=str(tmp_path / "units.jsonl"), dev_units=str(tmp_path / "units.jsonl"), upsample=4, layers=1, dim=16,
        heads=2, window=8, batch_size=3,
        loop=LoopConfig(out_dir=str(tmp_path / "run"), max_steps=4, warmup_steps=1, eval_every=4, progress=False),
    )  # fmt: skip
    torch.manual_seed(0)
    metrics = train(config)
    decoder = SpeechDecoder.load(tmp_path / "run" / "model")
    # Four deduplicated units a line (the 5 5 run merges), ids up to 6: K = 7.
    assert (decoder.config.num_units, decoder.config.dim, decoder.config.ffn_dim) == (7, 16, 64)
    assert metrics["step"] == 4 and metrics["eval/unit_error_rate"] >= 0.0
    assert (tmp_path / "run" / "states_train.safetensors").is_file()
    assert load_yaml(DecoderTrainConfig, tmp_path / "run" / "train_config.yaml") == config  # the run's config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loop.max_steps=abc"], "LoopConfig.max_steps must be int, got str 'abc'"),
        (["layers=2.5"], "DecoderTrainConfig.layers must be int, got float 2.5"),
        (["drop_over_upsample=maybe"], "DecoderTrainConfig.drop_over_upsample must be bool, got str 'maybe'"),
        (["dev_units=3"], "DecoderTrainConfig.dev_units must be str, got int 3"),
        (["answers=a.jsonl"], "DecoderTrainConfig.answers must be a list of str, got str 'a.jsonl'"),
        (["loop.lr=[1, 2]"], "LoopConfig.lr must be float, got list [1, 2]"),
        (["loop.bogus=1"], "unknown key(s) ['bogus'] for LoopConfig"),
    ],
)
def test_a_bad_override_names_the_field_and_the_type_it_needs(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_yaml(DecoderTrainConfig, None, ["units=u.jsonl", *overrides])


def test_required_fields_and_exclusive_choices_are_named():
    with pytest.raises(
        ValueError, match=re.escape("DurationTrainConfig needs ['model', 'units']: they have no default")
    ):
        load_yaml(DurationTrainConfig, None, ["lookahead=1"])
    with pytest.raises(ValueError, match=r"exactly one of units .* and answers"):
        load_yaml(DecoderTrainConfig, None, ["units=u.jsonl", "answers=[a.jsonl]"])
    with pytest.raises(ValueError, match="dev_units goes with units"):
        DecoderTrainConfig(answers=["a.jsonl"], dev_units="u.jsonl")
    with pytest.raises(ValueError, match="exactly one of units and units_file"):
        VocoderSynthConfig(model="m", out="o.wav")


def test_a_partial_loop_section_keeps_the_trainers_loop_defaults(tmp_path):
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"model": "voc", "units": "u.jsonl", "loop": {"lr": 0.01}}))
    config = load_yaml(DurationTrainConfig, tmp_path / "d.yaml", ["loop.seed=3"])
    default = field_default(DurationTrainConfig, "loop")
    assert (config.loop.lr, config.loop.seed) == (0.01, 3)
    assert (config.loop.max_steps, config.loop.out_dir, config.loop.device) == (3000, "runs/speech/durations", "cpu")
    assert config.loop == LoopConfig(**{**vars(default), "lr": 0.01, "seed": 3})


def test_the_command_line_only_parses_into_the_config(tmp_path, monkeypatch, capsys):
    """Flags become overrides; --steps sets a warm-up under the YAML, which may still set its own."""
    from speechllm.cli import main

    seen: list[DurationTrainConfig] = []
    monkeypatch.setattr("speechllm.speech_out.duration_train.train_durations", lambda cfg, resume: seen.append(cfg))
    argv = ["vocoder", "train-durations", "--model", "voc", "--units", "u.jsonl", "--out", str(tmp_path / "run"),
            "--steps", "50", "--eval-every", "10", "--quiet", "--set", "loop.keep_last=4"]  # fmt: skip
    assert main(argv) == 0
    loop = seen[-1].loop
    assert (loop.out_dir, loop.max_steps, loop.warmup_steps, loop.save_every, loop.eval_every) == (
        str(tmp_path / "run"), 50, 5, 10, 10,
    )  # fmt: skip
    assert (loop.progress, loop.keep_last, seen[-1].model) == (False, 4, "voc")
    (tmp_path / "d.yaml").write_text("loop:\n  warmup_steps: 20\n")
    assert main([*argv, "--config", str(tmp_path / "d.yaml")]) == 0
    assert seen[-1].loop.warmup_steps == 20
    assert main([*argv, "--set", "loop.lr=fast"]) == 2
    assert "LoopConfig.lr must be float, got str 'fast'" in capsys.readouterr().err


def test_speech_eval_takes_a_config_that_the_command_line_fills(tmp_path):
    import argparse

    from speechllm.speech_out import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(["--questions", "q.jsonl", "--num", "7", "--paths", "text_tts", "--out", str(tmp_path)])
    cfg = evaluate.config_from_args(args)
    assert cfg == evaluate.SpeechEvalConfig(questions="q.jsonl", num=7, paths=["text_tts"], out=tmp_path)
    with pytest.raises(ValueError, match="num must be >= 1, got 0"):
        evaluate.SpeechEvalConfig(num=0)
    with pytest.raises(ValueError, match="unknown paths"):
        evaluate.SpeechEvalConfig(paths=["vocoder"])
    with pytest.raises(FileNotFoundError, match=r"--questions .*missing\.jsonl does not exist"):
        evaluate.run(evaluate.SpeechEvalConfig(questions=str(tmp_path / "missing.jsonl"), out=tmp_path))
