"""`speechllm bench`: the end-to-end speech LLM against the cascade a user would otherwise build.

On the same inputs, in one run:

- **e2e**: our model; the clock starts with the waveform in memory and covers log-mel, the
  Whisper encoder, compressor, adaptor, prefill and greedy decoding (`stream_generate`).
- **cascade**: `faster-whisper` on the same Whisper tiny.en CTranslate2 weights (int8, greedy,
  `beam_size=1`, English) transcribes, then the same LLM (the plain LLM of the model's config,
  no adaptor, no LoRA) answers the transcript with the same greedy decoding loop and token limit.

Both LLMs reuse the keys of the prompt start they share with the previous input (the system turn,
`PromptCache`), as the engine does (`--no-reuse-prompts`: every prompt prefilled whole).

Per system, averaged over the inputs (batch size 1, one untimed warm-up run first):

- `ttft_s`: time to the first answer token (cascade: ASR time + LLM time to first token);
- `latency_s`: time to the whole answer;
- `tokens_per_s`: decoding speed, LLM steps after the first (EOS included) / (latency − TTFT);
- `rtf`: real-time factor, processing time / audio duration (below 1: faster than real time);
- `peak_rss_mb`: the peak resident memory of the system's own process (`ru_maxrss`), model
  loading included; each system runs in a fresh subprocess so neither sees the other's memory.

The ratios (`ttft_ratio`, `latency_ratio`, `tokens_per_s_ratio`, `rtf_ratio`, `peak_rss_ratio`)
are e2e ÷ cascade: below 1 is better for e2e, except tokens/s where above 1 is. Where the first
token's time goes: `e2e_speech_s` (the model's `prepare`: log-mel, encoder and connector, which for a
token bridge includes the recognizer) and `cascade_asr_s` (faster-whisper);
`e2e_recognizer_threads`, the CPU threads a CTranslate2 recognizer runs on (`bridge.threads`, as
`auto` chose them), else null.
Training throughput (samples/s) of every stage in `STAGES` is measured in a third process on
`train_steps` optimizer steps (after one warm-up step) of `StageModel` on the bench inputs, their
encoder frames in a temporary `FeatureCache`, as `speechllm train` would read them; AdamW, fp32.
The ASR transcripts also give the cascade's WER against the spoken text, and the two systems'
answers their agreement (`metrics.agreement_rate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from speechllm.config import SAMPLE_RATE

log = logging.getLogger(__name__)

# Each per-system metric and the key of its e2e ÷ cascade ratio.
METRICS = {
    "ttft_s": "ttft_ratio",
    "latency_s": "latency_ratio",
    "tokens_per_s": "tokens_per_s_ratio",
    "rtf": "rtf_ratio",
    "peak_rss_mb": "peak_rss_ratio",
}
ASR_SOURCE = "bundled:whisper-tiny.en"


@dataclass
class BenchConfig:
    """What `run_bench` measures, on which model and inputs."""

    model: str | None = None
    """A speechllm checkpoint directory; None is the embedded default (`load_model()`)."""
    manifest: str | None = None
    """Inputs from a manifest (first `n` samples); None speaks the `n` longest shipped questions."""
    n: int = 5
    """Number of inputs."""
    max_new_tokens: int = 64
    """Greedy answers stop at end-of-sequence or after this many tokens, for both systems."""
    threads: int | None = None
    """CPU threads for torch and CTranslate2 in every system; None keeps torch's default."""
    train_steps: int = 3
    """Timed optimizer steps per training stage; 0 skips the training throughput."""
    train_batch_size: int = 4
    """Samples per training step."""
    tiny: bool = False
    """Tiny random encoder and LLM built in a temp dir (smoke tests); `model` is then ignored."""
    cascade: bool = True
    """Measure the cascade too (needs faster-whisper)."""
    overrides: list[str] = field(default_factory=list)
    """`key=value` overrides of the end-to-end model's config (e.g. `bridge.beam_size=1`); those of
    the LLM and its prompt (`shared_llm_overrides`) apply to the cascade's LLM too."""
    reuse_prompts: bool = True
    """Both systems' LLM reuses the keys of the prompt start it shares with the previous input (the
    system turn: `PromptCache`), as the engine does; False prefills every prompt whole."""
    rounds: int = 1
    """How many times each system runs on the inputs, the two taken in turn (e2e, cascade, e2e, ...)
    so that a busy spell of a shared machine falls on both; the figures pool every round's rows, and
    `ttft_ratio_per_round` gives each round's own ratio."""

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "train_batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


# --------------------------------------------------------------------------- inputs and models


def default_inputs(n: int, out_dir: Path) -> Path:
    """Speak the `n` longest shipped questions (~4-5 s each) with eSpeak; returns their manifest."""
    from speechllm.data.audio import save_wav
    from speechllm.data.builders import read_questions, shipped_text
    from speechllm.data.manifest import Sample, write_manifest
    from speechllm.data.tts import EspeakEngine

    questions = read_questions(shipped_text("questions.jsonl"))
    questions = sorted(questions, key=lambda q: -len(q.question.split()))[:n]  # stable: ties keep file order
    engine = EspeakEngine()
    samples = []
    for q in questions:
        wav = out_dir / f"{q.id}.wav"
        save_wav(wav, engine.synthesize(q.question, voice="en-us", rate=1.0))
        samples.append(
            Sample(id=q.id, task="instruct", audio=[str(wav)], target=q.answer or "",
                   messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}]}],
                   voice="espeak:en-us", meta={"question": q.question})
        )  # fmt: skip
    write_manifest(out_dir / "inputs.jsonl", samples)
    return out_dir / "inputs.jsonl"


def _model_config(model_dir: str | None, overrides: list[str] | None = None) -> Any:
    from speechllm.config import SpeechLLMConfig, load_yaml
    from speechllm.defaults import DEFAULT_CHECKPOINT

    if model_dir is not None:
        return load_yaml(SpeechLLMConfig, Path(model_dir) / "config.yaml", overrides)
    shipped = DEFAULT_CHECKPOINT / "config.yaml"
    return load_yaml(SpeechLLMConfig, shipped if shipped.is_file() else None, overrides)  # None: the defaults


def shared_llm_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change the LLM or its prompt (`llm.*`, `system_prompt`): the cascade takes
    them too, so both systems run the same LLM."""
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    return [o for o, key in zip(overrides, keys) if key == "system_prompt" or key.startswith("llm.")]


# --------------------------------------------------------------------------- workers (own process each)


def _inputs(spec: dict[str, Any]) -> list[tuple[Any, list[Any]]]:
    from speechllm.data.audio import load_audio
    from speechllm.data.manifest import read_manifest

    return [(s, [load_audio(p) for p in s.audio]) for s in read_manifest(spec["manifest"])[: spec["n"]]]


def _with_texts(sample: Any, texts: list[str]) -> list[dict[str, Any]]:
    """The sample's messages with audio part i replaced by `texts[i]` (the cascade's prompt)."""
    out = []
    for m in sample.messages:
        content = m["content"]
        if isinstance(content, list):
            content = "\n".join(texts[p["audio"]] if p["type"] == "audio" else p["text"] for p in content)
        out.append({"role": m["role"], "content": content})
    return out


def _timed_answer(steps: Any, eos: set[int], decode: Any, t0: float) -> dict[str, Any]:
    """Greedy decoding of one prompt (`steps`: its tokens, one (1,) tensor a step): seconds to first
    token and to the end (from t0), steps, text."""
    ids, n, ttft = [], 0, 0.0
    for step in steps:
        n += 1
        if n == 1:
            ttft = time.perf_counter() - t0
        token = int(step[0])
        if token in eos:
            break
        ids.append(token)
    total = time.perf_counter() - t0
    return {"ttft_s": ttft, "latency_s": total, "steps": n, "answer": decode(ids)}


def _run_e2e(spec: dict[str, Any]) -> list[dict[str, Any]]:
    from speechllm.defaults import load_model
    from speechllm.eval.runner import speech_conversation
    from speechllm.inference.generation import GenerationConfig, eos_token_ids, stream_generate
    from speechllm.inference.prompt_cache import PromptCache

    model = load_model(spec["model"], spec["overrides"])
    reuse = PromptCache() if spec["reuse_prompts"] else None
    threads = getattr(model.recognizer, "threads", None)  # the CTranslate2 recognizer's CPU threads
    inputs = _inputs(spec)
    rows = []
    for i, (sample, audios) in enumerate([inputs[0], *inputs]):  # the first run warms up, untimed
        t0 = time.perf_counter()
        batch = model.prepare([speech_conversation(sample, audios)])
        speech_s = time.perf_counter() - t0  # log-mel, encoder and connector (the recognizer, for a bridge)
        steps = stream_generate(model, batch, GenerationConfig(max_new_tokens=spec["max_new_tokens"]), reuse=reuse)
        row = _timed_answer(steps, eos_token_ids(model), model.processor.decode, t0)
        if i:
            rows.append({"id": sample.id, "audio_s": sum(len(a) for a in audios) / SAMPLE_RATE,
                         "speech_s": speech_s, "recognizer_threads": threads, **row})  # fmt: skip
    return rows


def _run_cascade(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import torch
    from faster_whisper import WhisperModel

    from speechllm.inference.generation import GenerationConfig, generate_tokens, llm_eos_ids
    from speechllm.inference.prompt_cache import PromptCache
    from speechllm.model.features import LogMel
    from speechllm.model.processor import SpeechLLMProcessor
    from speechllm.weights.llm import load_llm
    from speechllm.weights.whisper import resolve_encoder_source

    asr = WhisperModel(str(resolve_encoder_source(ASR_SOURCE)), device="cpu", compute_type="int8",
                       cpu_threads=torch.get_num_threads())  # fmt: skip
    config = _model_config(spec["model"], shared_llm_overrides(spec["overrides"]))
    llm, tokenizer = load_llm(config.llm)  # the plain LLM: decoded with the loop the end-to-end model uses
    processor = SpeechLLMProcessor(tokenizer, LogMel(80), config.speech_token, config.system_prompt)
    gen = GenerationConfig(max_new_tokens=spec["max_new_tokens"])
    eos, pad = llm_eos_ids(llm, tokenizer), tokenizer.pad_token_id
    reuse = PromptCache() if spec["reuse_prompts"] else None
    inputs = _inputs(spec)
    rows = []
    for i, (sample, audios) in enumerate([inputs[0], *inputs]):
        t0 = time.perf_counter()
        texts = []
        for audio in audios:
            segments, _ = asr.transcribe(audio, language="en", beam_size=1, vad_filter=False)
            texts.append(" ".join(s.text.strip() for s in segments))  # segments is lazy: this decodes
        asr_s = time.perf_counter() - t0
        ids = torch.tensor([processor.render(_with_texts(sample, texts)).input_ids])  # 1, L
        embeds = llm.get_input_embeddings()(ids).detach()  # 1, L, D
        steps = generate_tokens(llm, embeds, torch.ones_like(ids), gen, eos=eos, pad_id=pad, reuse=reuse)
        row = _timed_answer(steps, eos, processor.decode, t0)
        if i:
            rows.append({"id": sample.id, "audio_s": sum(len(a) for a in audios) / SAMPLE_RATE, "asr_s": asr_s,
                         "transcript": " ".join(texts), **row})  # fmt: skip
    return rows


def _stage_config(base: Any, stage: str) -> Any:
    """The model config a stage can run with: ctc_head needs the CTC compressor, instruct needs LoRA.
    The stages train the compressor, adaptor and LoRA of the `continuous` connector (and its CTC head),
    never a `whisper` recognizer (`recipes/recognizer_adapter.py` trains that without these stages), so
    a whisper bridge's config is timed as the connector the stages train."""
    config = dataclasses.replace(base, trainable=[])
    if base.bridge.recognizer == "whisper":
        config.bridge = dataclasses.replace(base.bridge, mode="continuous", recognizer="ctc")
    if stage == "ctc_head":
        config.compressor = dataclasses.replace(base.compressor, kind="ctc")
    # LoRA is injected into the shared LLM in place, so only the last stage (instruct) may have it.
    config.lora = dataclasses.replace(base.lora, enabled=stage == "instruct")
    return config


def _run_train(spec: dict[str, Any]) -> dict[str, float]:
    import torch

    from speechllm.data.encoding import encoder_fn
    from speechllm.data.feature_cache import FeatureCache, encode_manifest
    from speechllm.data.manifest import read_manifest
    from speechllm.model.builders import assemble
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.training.dataset import SpeechDataset
    from speechllm.training.stages import STAGES, StageModel
    from speechllm.weights.llm import load_llm

    base = _model_config(spec["model"])
    encoder = load_whisper_encoder(base.encoder)
    llm, tokenizer = load_llm(base.llm)
    samples = read_manifest(spec["manifest"])[: spec["n"]]
    cache = None
    if base.encoder.layer != "weighted":  # a cache holds one layer
        cache = FeatureCache(Path(spec["tmp"]) / "cache", encoder.fingerprint())
        encode_manifest(samples, cache, encoder_fn(encoder), progress=False)
    size, steps = spec["train_batch_size"], spec["train_steps"]
    out: dict[str, float] = {}
    for stage in sorted(STAGES, key=lambda s: s == "instruct"):  # instruct (LoRA) last
        model = assemble(_stage_config(base, stage), encoder, llm, tokenizer)
        stage_model = StageModel(model, stage).train()
        data = SpeechDataset(samples, cache, model)
        params = [p for p in stage_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        for i in range(steps + 1):  # step 0 warms up, untimed
            if i == 1:
                t0 = time.perf_counter()
            batch = data.batch([(i * size + j) % len(data) for j in range(size)])
            stage_model(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        out[stage] = steps * size / (time.perf_counter() - t0)
    return out


WORKERS = {"e2e": _run_e2e, "cascade": _run_cascade, "train": _run_train}


def worker_main(kind: str, spec_path: str, out_path: str) -> None:
    """Run one system on the spec and write its rows plus this process's peak RSS (MB) as JSON."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with torch.inference_mode(kind != "train"):
        result = WORKERS[kind](spec)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    payload = {"result": result, "peak_rss_mb": peak_kb / 1024, "threads": torch.get_num_threads()}
    Path(out_path).write_text(json.dumps(payload))


# --------------------------------------------------------------------------- orchestration


def _run_worker(kind: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    spec_path, out_path = tmp / f"{kind}.spec.json", tmp / f"{kind}.out.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "speechllm.bench", kind, str(spec_path), str(out_path)]
    log.info("bench: running %s", kind)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {kind!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return cast(dict[str, Any], json.loads(out_path.read_text()))


def system_figures(rows: list[dict[str, Any]], peak_rss_mb: float) -> dict[str, float | None]:
    """Means over inputs of one system's per-input timings (see the module docstring)."""
    n = len(rows)
    decode_time = sum(r["latency_s"] - r["ttft_s"] for r in rows)
    decode_steps = sum(r["steps"] - 1 for r in rows)
    return {
        "ttft_s": sum(r["ttft_s"] for r in rows) / n,
        "latency_s": sum(r["latency_s"] for r in rows) / n,
        "tokens_per_s": decode_steps / decode_time if decode_steps and decode_time > 0 else None,
        "rtf": sum(r["latency_s"] for r in rows) / sum(r["audio_s"] for r in rows),
        "peak_rss_mb": peak_rss_mb,
    }


def ratio(e2e: float | None, cascade: float | None) -> float | None:
    """e2e ÷ cascade, or None when either is missing or the cascade's is 0."""
    return e2e / cascade if e2e is not None and cascade else None


def _quality(e2e: list[dict[str, Any]], cascade: list[dict[str, Any]], manifest: str) -> dict[str, Any]:
    from speechllm.data.manifest import read_manifest
    from speechllm.data.transcripts import spoken_text
    from speechllm.eval.metrics import agreement_rate, wer

    by_id = {s.id: s for s in read_manifest(manifest)}
    out: dict[str, Any] = {
        "answer_agreement": agreement_rate([(a["answer"], b["answer"]) for a, b in zip(e2e, cascade)])
    }
    try:
        refs = [spoken_text(by_id[r["id"]]) for r in cascade]
        out["cascade_asr_wer"] = wer(refs, [r["transcript"] for r in cascade])
    except ValueError as e:  # no transcript of the audio in the manifest
        log.warning("no cascade ASR WER: %s", e)
    return out


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure both systems (and training) in their own processes; returns the figures (JSON-ready)."""
    import importlib.util

    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.model.tiny import save_tiny_speech_llm

    with tempfile.TemporaryDirectory(prefix="speechllm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = str(save_tiny_speech_llm(tmp / "tiny")) if config.tiny else config.model
        manifest = config.manifest or str(default_inputs(config.n, tmp))
        spec = {**dataclasses.asdict(config), "model": model, "manifest": manifest, "tmp": str(tmp)}
        notes = []
        if model is None and not (DEFAULT_CHECKPOINT / "config.yaml").is_file():
            notes.append("no trained default adaptor is shipped: the timings are valid, the e2e answers are not")
        kinds = ["e2e"]
        if config.cascade and importlib.util.find_spec("faster_whisper") is None:
            notes.append("cascade skipped: faster-whisper is not installed (pip install faster-whisper)")
        elif config.cascade:
            kinds.append("cascade")
        rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for _ in range(config.rounds):
            for kind in kinds:
                rounds[kind].append(_run_worker(kind, spec, tmp))
        runs: dict[str, Any] = {kind: pooled(done) for kind, done in rounds.items()}
        if config.train_steps:
            runs["train"] = _run_worker("train", spec, tmp)
        return _figures(config, spec, runs, notes)


def pooled(done: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's worker outputs of several rounds as one: every round's rows (each with its
    `round`), the largest peak RSS."""
    rows = [{**row, "round": i} for i, out in enumerate(done) for row in out["result"]]
    return {"result": rows, "peak_rss_mb": max(out["peak_rss_mb"] for out in done), "threads": done[0]["threads"]}


def per_round_ratio(e2e: list[dict[str, Any]], cascade: list[dict[str, Any]], metric: str) -> list[float | None]:
    """e2e ÷ cascade of `metric`'s mean in each round (rows as `pooled` tags them)."""
    out = []
    for r in sorted({row["round"] for row in e2e}):
        mine, theirs = ([row[metric] for row in rows if row["round"] == r] for rows in (e2e, cascade))
        out.append(ratio(sum(mine) / len(mine), sum(theirs) / len(theirs)) if mine and theirs else None)
    return out


def _figures(config: BenchConfig, spec: dict[str, Any], runs: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    e2e_rows = runs["e2e"]["result"]
    figures: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "threads": runs["e2e"]["threads"],
        "model": "tiny random" if config.tiny else (config.model or "default"),
        "overrides": config.overrides,
        "reuse_prompts": config.reuse_prompts,
        "rounds": config.rounds,
        "inputs": len(e2e_rows) // config.rounds,
        "audio_s_mean": sum(r["audio_s"] for r in e2e_rows) / len(e2e_rows),
        "max_new_tokens": config.max_new_tokens,
    }
    e2e = system_figures(e2e_rows, runs["e2e"]["peak_rss_mb"])
    figures["e2e_speech_s"] = sum(r["speech_s"] for r in e2e_rows) / len(e2e_rows)
    figures["e2e_recognizer_threads"] = e2e_rows[0].get("recognizer_threads")
    cascade: dict[str, float | None] = dict.fromkeys(METRICS)
    if "cascade" in runs:
        rows = runs["cascade"]["result"]
        cascade = system_figures(rows, runs["cascade"]["peak_rss_mb"])
        figures["cascade_asr_s"] = sum(r["asr_s"] for r in rows) / len(rows)
        figures["ttft_ratio_per_round"] = per_round_ratio(e2e_rows, rows, "ttft_s")
        figures.update(_quality(e2e_rows, rows, spec["manifest"]))
    for metric in METRICS:
        figures[f"e2e_{metric}"] = e2e[metric]
        figures[f"cascade_{metric}"] = cascade[metric]
        figures[METRICS[metric]] = ratio(e2e[metric], cascade[metric])
    if "train" in runs:
        for stage, rate in runs["train"]["result"].items():
            figures[f"train_{stage}_samples_per_s"] = rate
        figures["train_peak_rss_mb"] = runs["train"]["peak_rss_mb"]
    figures["notes"] = notes
    figures["samples"] = {"e2e": e2e_rows, "cascade": runs.get("cascade", {}).get("result", [])}
    return figures


def write_plots(figures: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Bar charts: latency (TTFT, total), memory and speed side by side; training samples/s per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechllm.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = [("ttft_s", "time to first token (s)"), ("latency_s", "total latency (s)"),
              ("peak_rss_mb", "peak RSS (MB)"), ("tokens_per_s", "decoding tokens/s")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (metric, label) in zip(axes, panels):
        values = [figures.get(f"e2e_{metric}") or 0.0, figures.get(f"cascade_{metric}") or 0.0]
        bars = ax.bar(["end-to-end", "cascade"], values, color=["tab:blue", "tab:orange"])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(label)
    fig.suptitle(f"{figures['model']} model, {figures['inputs']} inputs of {figures['audio_s_mean']:.1f} s")
    fig.tight_layout()
    paths = [out / "e2e_vs_cascade.png"]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    stages = {k[len("train_") : -len("_samples_per_s")]: v for k, v in figures.items() if k.endswith("_samples_per_s")}
    if stages:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bars = ax.bar(list(stages), list(stages.values()), color="tab:green")
        ax.bar_label(bars, fmt="%.3g")
        ax.set_ylabel("samples/s")
        ax.set_title("training throughput per stage")
        fig.tight_layout()
        paths.append(out / "training_throughput.png")
        with atomic_path(paths[-1]) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one bench system in this process (used by run_bench)")
    parser.add_argument("kind", choices=sorted(WORKERS))
    parser.add_argument("spec")
    parser.add_argument("out")
    args = parser.parse_args()
    worker_main(args.kind, args.spec, args.out)
