"""`speechllm train`: one stage of training, configured by YAML, as setup() -> main() -> fit().

    speechllm train --config configs/stage1_asr.yaml loop.max_steps=300 data.feature_cache=cache/
    torchrun --nproc_per_node 2 -m speechllm.cli train --config ...     # data-parallel

The run directory (`loop.out_dir`) gets metrics.jsonl, curves.png, resumable checkpoints, and at
the end `model/`: a normal speechllm checkpoint (`speechllm.model.from_pretrained("…/model")`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechllm.config import SpeechLLMConfig, load_yaml, save_config
from speechllm.data.feature_cache import FeatureCache
from speechllm.data.manifest import read_manifest
from speechllm.eval.metrics import agreement_rate, wer
from speechllm.inference.generation import GenerationConfig, decode_stream, stream_generate
from speechllm.model.builders import build_speech_llm
from speechllm.model.checkpoint import WEIGHTS_FILE, load_weights, save_pretrained
from speechllm.model.speech_llm import SpeechLLM
from speechllm.training.checkpoint import latest_checkpoint, load_checkpoint
from speechllm.training.dataset import SpeechDataset
from speechllm.training.distributed import cleanup_distributed, setup_distributed, unwrap
from speechllm.training.loop import Batches, LoopConfig, ResumableSampler, fit
from speechllm.training.stages import STAGES, StageModel, ctc_greedy
from speechllm.weights.errors import WeightsError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    train_manifest: str = ""
    """JSONL manifest of training samples (see README, Data)."""
    dev_manifest: str | None = None
    """Held-out samples (other voices) for periodic evaluation."""
    feature_cache: str | None = None
    """Feature cache of both manifests' audio (`speechllm data encode`); None encodes on the fly."""
    eval_samples: int = 40
    """How many dev samples each evaluation uses."""
    bucket_by_length: bool = True
    """Batch utterances of similar length together (less padding)."""


@dataclass
class TrainConfig:
    stage: str = "asr"
    """One of ctc_embed, ctc_head, asr, instruct, distill (see speechllm.training.stages)."""
    model: SpeechLLMConfig = field(default_factory=SpeechLLMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(out_dir="runs/train"))
    batch_size: int = 8
    """Samples per micro-batch (over all ranks)."""
    init_from: str | None = None
    """A speechllm checkpoint whose weights start this stage (e.g. the previous stage's model/)."""
    adaptor_lr_scale: float = 1.0
    """The adaptor's learning rate relative to loop.lr."""
    ce_weight: float = 0.0
    """distill: weight of an added cross-entropy on the answer."""
    eval_max_new_tokens: int = 48

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)}, got {self.stage!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.model.encoder.layer == "weighted" and self.data.feature_cache:
            raise ValueError("encoder.layer 'weighted' needs every layer; a feature cache holds one: drop one of them")


def load_train_config(path: str | Path | None, overrides: list[str]) -> TrainConfig:
    """A TrainConfig from YAML (None: defaults) and `key.path=value` overrides (the one loader)."""
    return load_yaml(TrainConfig, path, overrides)


def init_weights(model: SpeechLLM, directory: str | Path) -> list[str]:
    """Copy the tensors of a speechllm checkpoint into `model` (parts it lacks keep their init)."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"init_from {directory}: no {WEIGHTS_FILE} there")
    return load_weights(model, path, require_owned=False)


def setup(config: TrainConfig) -> tuple[StageModel, SpeechDataset, SpeechDataset | None]:
    model = build_speech_llm(config.model)
    if config.init_from:
        loaded = init_weights(model, config.init_from)
        log.info("initialised %d tensors from %s", len(loaded), config.init_from)
    cache = None
    if config.data.feature_cache:
        cache = FeatureCache(config.data.feature_cache, model.encoder.fingerprint())
    if not config.data.train_manifest:
        raise ValueError("data.train_manifest is required")
    train = SpeechDataset(read_manifest(config.data.train_manifest), cache, model)
    dev = None
    if config.data.dev_manifest:
        dev_samples = read_manifest(config.data.dev_manifest)[: config.data.eval_samples]
        dev = SpeechDataset(dev_samples, cache, model)
    return StageModel(model, config.stage, ce_weight=config.ce_weight), train, dev


def make_eval_fn(config: TrainConfig, dev: SpeechDataset) -> Any:
    """WER (ASR data) or answer agreement (instructions) on the dev set, for the stage's model."""

    def evaluate(stage_model: Any) -> dict[str, float]:
        stage = unwrap(stage_model)
        assert isinstance(stage, StageModel)
        batch = dev.batch(list(range(len(dev))))
        if stage.stage in ("ctc_embed", "ctc_head"):
            scorer = stage.embed_logits if stage.stage == "ctc_embed" else stage.head_logits
            log_probs, lengths = scorer(batch["frames"])
            blank = log_probs.shape[-1] - 1 if stage.stage == "ctc_embed" else stage.head_blank()
            ids = ctc_greedy(log_probs, lengths, blank=blank)
            hyps = [stage.model.processor.decode(i) for i in ids]
            return {"ctc_wer": wer(batch["transcripts"], hyps)}
        model = stage.model
        prepared = model.prepare(batch["conversations"], left_pad=True, frames=batch["frames"])
        gen = GenerationConfig(max_new_tokens=config.eval_max_new_tokens)
        hyps = decode_stream(model, stream_generate(model, prepared, gen), len(dev), [])
        tasks = {s.task for s in dev.samples}
        if tasks == {"asr"}:
            return {"wer": wer(batch["answers"], hyps)}
        return {"agreement": agreement_rate(list(zip(hyps, batch["answers"])))}

    return evaluate


def main(config: TrainConfig, *, resume: bool = False) -> dict[str, float]:
    rank, world = 0, 1
    if _launched_by_torchrun():
        rank, world, _ = setup_distributed()
    try:
        stage_model, train, dev = setup(config)
        sampler = ResumableSampler(
            len(train),
            config.batch_size,
            seed=config.loop.seed,
            bucket_by=train.lengths() if config.data.bucket_by_length else None,
            rank=rank,
            world_size=world,
        )
        groups = None
        if config.adaptor_lr_scale != 1.0:
            adaptor = [n for n, p in stage_model.named_parameters() if p.requires_grad and ".adaptor." in f".{n}"]
            groups = [{"params": adaptor, "lr": config.loop.lr * config.adaptor_lr_scale}]
        out = Path(config.loop.out_dir)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, out / "train_config.yaml")
        metrics = fit(
            stage_model,
            lambda m, b: m(b),
            Batches(sampler, train.batch),
            config.loop,
            eval_fn=make_eval_fn(config, dev) if dev is not None else None,
            resume=resume,
            param_groups=groups,
        )
        if rank == 0:
            save_pretrained(stage_model.model, out / "model")
            log.info("wrote %s", out / "model")
        return metrics
    finally:
        cleanup_distributed()


def export(config: TrainConfig) -> Path:
    """Write `out_dir/model` from the run's latest checkpoint (e.g. of a run stopped early)."""
    path = latest_checkpoint(config.loop.out_dir)
    if path is None:
        raise ValueError(f"{config.loop.out_dir} has no complete checkpoint to export")
    stage_model, _, _ = setup(config)
    weights, state = load_checkpoint(path)
    params = dict(stage_model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise WeightsError(f"{path}: {unknown[:5]} are not parameters of this stage's model")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    out = Path(config.loop.out_dir) / "model"
    save_pretrained(stage_model.model, out)
    log.info("exported %s (step %s) to %s", path.name, state.get("step"), out)
    return out


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ
