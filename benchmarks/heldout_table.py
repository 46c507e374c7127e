"""The held-out table: a model vs Whisper tiny.en's own decoder on audio no training recipe uses.

    python recipes/heldout_data.py --out data_out/heldout                   # the sets, once
    python benchmarks/heldout_table.py --whisper-only                       # Whisper tiny.en alone: n, WER per set
    python benchmarks/heldout_table.py [--model DIR] [--override key=value ...] [--name NAME] [--limit N]

Per ASR set (festival, its telephone version, flite, the human dev set and each of its sources):
the model's WER: for a token-bridge model (`bridge.mode` posterior or top1) of the text its LLM reads
(`--asr bridge`, the default, as `speechllm transcribe` does), otherwise (or `--asr llm`) the LLM asked
"Transcribe the audio." after the audio, greedy; next to Whisper tiny.en's own decoder on the same audio
(faster-whisper, beam 5, English).
Per spoken-question set (spoken_qa and its telephone version), the model answers each question
twice, spoken and typed (`meta.question`), greedy, same max_new_tokens:
- agreement: the first sentences of the two answers are equal after normalisation
  (`metrics.same_first_sentence`); `agree_f1` is the looser `metrics.agree` (token F1 >= 0.8);
- accuracy: an accepted answer (`meta.answer`) occurs in the answer, normalised, spoken and typed,
  and their ratio (target: spoken >= 95 % of typed);
- Whisper's WER on the questions' audio, to tell hearing from answering.
Results: runs/heldout/<name>/{summary.md, summary.json, <set>.jsonl (per sample)}; the Markdown is
printed. A set whose results are already there (same model, overrides, limit) is not run again.
Whisper's transcripts are kept in runs/heldout/whisper_tiny_en/<set>.jsonl and reused.
WER uses the project's Whisper-style normalisation (speechllm.eval.metrics).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from speechllm.data.audio import load_audio
from speechllm.data.manifest import Sample, read_manifest
from speechllm.eval.heldout import cached_text_answers, markdown, run_set, whisper_wer
from speechllm.eval.runner import Answerer, EvalConfig, bridge_answerer, model_answerer
from speechllm.eval.whisper_asr import WhisperTranscriber

SETS = ("festival", "festival_tel", "flite", "human", "spoken_qa", "spoken_qa_tel")
WHISPER_BEAM = 5


def manifest_path(data: Path, name: str) -> Path:
    return data / name / f"{name}.jsonl"


def load_set(data: Path, name: str, limit: int | None) -> list[Sample]:
    path = manifest_path(data, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build it with `python recipes/heldout_data.py --sets {name}`")
    samples = read_manifest(path)
    if limit is None or limit >= len(samples):
        return samples
    # a fixed random subset, so that a limited run still covers every voice and source
    chosen = np.random.default_rng(0).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(chosen)]


def human_dev(data: Path, report: int = 100, n: int = 150) -> list[Sample]:
    """People of the human set outside the `report` the held-out tables report (`load_set`'s subset):
    a fixed random `n` of them, for choosing among runs without looking at the reported ones."""
    reported = {s.id for s in load_set(data, "human", report)}
    rest = [s for s in load_set(data, "human", None) if s.id not in reported]
    return [rest[i] for i in sorted(np.random.default_rng(1).permutation(len(rest))[:n])]


def whisper_hypotheses(samples: list[Sample], cache: Path, transcriber: Any) -> dict[str, str]:
    """Whisper tiny.en's transcript of each sample's audio, from the cache file or made and appended."""
    done: dict[str, str] = {}
    if cache.is_file():
        done = {r["id"]: r["hypothesis"] for r in map(json.loads, cache.read_text().splitlines()) if r}
    missing = [s for s in samples if s.id not in done]
    if missing:
        transcribe = transcriber()
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache, "a", encoding="utf-8") as f:
            for s in missing:
                done[s.id] = transcribe(load_audio(s.audio[0]))
                f.write(json.dumps({"id": s.id, "hypothesis": done[s.id]}) + "\n")
                f.flush()
    return {s.id: done[s.id] for s in samples}


def whisper_only(args: argparse.Namespace, whisper_dir: Path) -> None:
    print(f"Whisper tiny.en's own decoder (faster-whisper int8, beam {WHISPER_BEAM}, English)\n")
    print("| set | n | WER |\n|---|---|---|")
    for name in args.sets:
        samples = load_set(args.data, name, args.limit)
        hyps = whisper_hypotheses(samples, whisper_dir / f"{name}.jsonl", lambda: WhisperTranscriber(WHISPER_BEAM))
        print(f"| {name} | {len(samples)} | {whisper_wer(samples, hyps):.3f} |")
        groups: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            if s.meta.get("source"):
                groups[s.meta["source"]].append(s)
        for source, members in groups.items():
            print(f"| {name} / {source} | {len(members)} | {whisper_wer(members, hyps):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--name", help="results folder name under runs/heldout (default: from model + overrides)")
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--limit", type=int, help="only N samples of each set (a fixed random subset)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("runs/heldout"))
    parser.add_argument(
        "--asr",
        choices=["bridge", "llm"],
        default="bridge",
        help="ASR of a token-bridge model: the text its LLM reads (bridge) or the LLM asked to transcribe",
    )
    parser.add_argument("--whisper-only", action="store_true", help="only Whisper tiny.en's own decoder, n and WER")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    whisper_dir = args.out / "whisper_tiny_en"
    if args.whisper_only:
        whisper_only(args, whisper_dir)
        return
    from speechllm.defaults import DEFAULT_CHECKPOINT
    from speechllm.model.checkpoint import from_pretrained

    model_dir = Path(args.model) if args.model else DEFAULT_CHECKPOINT
    name = args.name or "_".join([model_dir.name if args.model else "default", *args.override]).replace("/", "-")
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    setting = {"model": str(model_dir), "overrides": args.override, "limit": args.limit, "asr": args.asr,
               "max_new_tokens": args.max_new_tokens, "whisper_beam": WHISPER_BEAM}  # fmt: skip
    config = EvalConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    answer: Answerer | None = None
    hear: Answerer | None = None
    results = []
    for set_name in args.sets:
        done = out / f"{set_name}.summary.json"
        if done.is_file() and json.loads(done.read_text())["setting"] == setting:
            results.append(json.loads(done.read_text()))
            continue
        samples = load_set(args.data, set_name, args.limit)
        hyps = whisper_hypotheses(samples, whisper_dir / f"{set_name}.jsonl", lambda: WhisperTranscriber(WHISPER_BEAM))
        if answer is None:
            model = from_pretrained(model_dir, args.override)
            answer = cached_text_answers(model_answerer(model, config.max_new_tokens))
            # A token bridge's ASR is the text its LLM reads; `--asr llm` asks the LLM to transcribe instead.
            hear = bridge_answerer(model) if args.asr == "bridge" and model.config.bridge.mode != "continuous" else None
        asr = hear if hear is not None and not set_name.startswith("spoken_qa") else answer
        result = run_set(set_name, samples, asr, config, hyps)
        rows = result.pop("rows")
        (out / f"{set_name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        done.write_text(json.dumps({**result, "setting": setting}, indent=2))
        results.append(result)
        print(f"{set_name}: done in {result['seconds']} s", flush=True)
    title = f"held-out: {name} (limit {args.limit})" if args.limit else f"held-out: {name}"
    text = markdown(title, results)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"setting": setting, "sets": results}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
