"""Choose `bridge.confidence` (greedy transcripts at least that confident skip the beam and the LLM's
rescoring) on development sets that share no audio, engine or person with the held-out tables.

    OMP_NUM_THREADS=2 python benchmarks/confidence_gate.py [--sets recipe human_dev bench] \
        [--thresholds -0.05 -0.1 ...] [--override bridge.adapter=...]

For each utterance, the default recognizer (as `--override` leaves it) decodes greedily (a beam of
one: its tokens and mean log-probability per token, the end of text included) and as the default
hears it (beam 5, rescored by the LLM, `bridge.confidence` off). For each threshold, the gated
transcript is the greedy one where its mean log-probability reaches the threshold and the default's
elsewhere: the share of utterances that take the fast path, the WER and the letter-perfect
transcripts (after `bridge.tidy`) of the gated transcripts, beside the default's and greedy's. For
each of `--shares`, the same with that share on the fast path chosen by either signal, the mean
log-probability or the least likely token's, the LLM's of the greedy transcript as the user's turn, or both
(`SIGNALS`, `confidence`): which one picks safer transcripts.

Sets: `recipe`, the 200 BIG-bench questions `recipes/recognizer_adapter.py data` spoke for its own dev
set (eSpeak NG voices and Piper `joe`, a third on a telephone line; `--recipe-dev`), never trained on;
`human_dev`, 150 people of the held-out human set outside the 100 the held-out tables report
(`heldout_table.human_dev`, as `recipes/recognizer_adapter.py eval --sets human_dev` draws them);
`bench`, the shipped questions `speechllm bench` speaks (eSpeak `en-us`; `--bench-n` longest), whose
share on the fast path is what the bench's first token sees. Rows: runs/confidence/<set>[_<tag>].jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from heldout_table import human_dev


def dev_samples(name: str, args: argparse.Namespace) -> list[tuple[str, str, Any]]:
    """(id, reference text, audio path) of a development set."""
    from speechllm.data.manifest import read_manifest
    from speechllm.data.transcripts import spoken_text

    if name == "recipe":
        rows = []
        for part in ("dev_espeak", "dev_piper"):
            manifest = args.recipe_dev / part / "asr.jsonl"
            if not manifest.is_file():
                raise SystemExit(f"{manifest} is missing: run `python recipes/recognizer_adapter.py data` first")
            rows += [(s.id, s.target or "", Path(s.audio[0])) for s in read_manifest(manifest)]
        return rows
    if name == "human_dev":
        return [(s.id, spoken_text(s), Path(s.audio[0])) for s in human_dev(args.heldout)]
    if name == "bench":
        from speechllm.bench import default_inputs

        manifest = default_inputs(args.bench_n, (args.out / "bench_audio").resolve())
        return [(s.id, s.meta["question"], Path(s.audio[0])) for s in read_manifest(manifest)]
    raise SystemExit(f"unknown set {name!r}: recipe, human_dev or bench")


def decode(model: Any, scorer: Any, audio: Path) -> dict[str, Any]:
    """Greedy (tokens' mean and least log-probability, the recognizer's and the LLM's as the user's
    turn) and the default's transcript of one audio file."""
    import torch

    from speechllm.data.audio import load_audio
    from speechllm.model.bridge import tidy_transcript
    from speechllm.model.speech_llm import SILENT_TEXT
    from speechllm.model.transcriber import encode_windows, mean_log_probability

    recognizer, bridge = model.recognizer, model.config.bridge
    features, lengths = model.processor.log_mel([load_audio(audio)])
    with torch.no_grad():
        if model.encoder.config.padding == "tail":
            recognizer.know_window(model.encoder.silence_states())
        states, _ = encode_windows(model.encoder, features, lengths)
        if states.shape[0] != 1:
            raise SystemExit(f"{audio}: longer than one 30 s window (the gate decides per window)")
        ids, logps = recognizer.token_log_probabilities(states, bridge.max_tokens)
        heard = model.transcribe_features(features, lengths)[0]
    greedy = recognizer.detokenize(ids).strip()
    greedy = tidy_transcript(greedy) if bridge.tidy else greedy
    llm = scorer.token_scores([greedy or SILENT_TEXT])[0]  # the fast path's one LLM pass reads it as the turn
    return {"greedy": greedy, "mean_logp": mean_log_probability(ids, sum(logps)), "min_logp": min(logps),
            "llm_mean": sum(llm) / len(llm), "llm_min": min(llm[1:] or llm), "default": heard}  # fmt: skip


SIGNALS = {"mean": "mean_logp", "min": "min_logp", "llm_mean": "llm_mean", "llm_min": "llm_min"}
"""How sure a greedy transcript is: the recognizer's mean log-probability per token (what
`bridge.confidence` compares) or its least likely token's; the LLM's mean log-probability per token
of it as the user's turn, or its least likely token's after the first (the LLM reads the transcript
anyway: on a fast path its one pass gives these for free); `both`, the weaker of the recognizer's mean
and the LLM's mean, each as its rank in the set."""


def confidence(rows: list[dict[str, Any]], signal: str) -> list[float]:
    """Each row's confidence by `signal` (higher: surer)."""
    if signal != "both":
        return [r[SIGNALS[signal]] for r in rows]
    ranks = [np.argsort(np.argsort([r[key] for r in rows])) for key in ("mean_logp", "llm_mean")]
    return [float(min(a, b)) for a, b in zip(*ranks)]


def by_share(rows: list[dict[str, Any]], signal: str, share: float) -> list[bool]:
    """The `share` of `rows` most confident by `signal` on the fast path (ties broken by order)."""
    sure = confidence(rows, signal)
    order = sorted(range(len(rows)), key=lambda i: -sure[i])
    fast = set(order[: round(share * len(rows))])
    return [i in fast for i in range(len(rows))]


def summary(rows: list[dict[str, Any]], fast: list[bool]) -> dict[str, Any]:
    """The share of `rows` on the fast path (`fast`: greedy kept), their WER and letter-perfect count."""
    from speechllm.eval.metrics import wer

    picks = [r["greedy"] if f else r["default"] for r, f in zip(rows, fast)]
    refs = [r["reference"] for r in rows]
    return {"fast": round(float(np.mean(fast)), 3), "wer": round(wer(refs, picks), 4),
            "exact": sum(p == r for p, r in zip(picks, refs)), "n": len(rows)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["recipe", "human_dev", "bench"])
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[-0.02, -0.05, -0.08, -0.1, -0.15, -0.2, -0.3, -0.5, -1.0])  # fmt: skip
    parser.add_argument("--shares", type=float, nargs="*", default=[0.2, 0.33, 0.5, 0.66],
                        help="also compare the signals at these shares on the fast path")  # fmt: skip
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--recipe-dev", type=Path, default=Path("data_out/decoder_adapt"))
    parser.add_argument("--heldout", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--bench-n", type=int, default=20)
    parser.add_argument("--tag", default="", help="appended to the rows' file names")
    parser.add_argument("--out", type=Path, default=Path("runs/confidence"))
    args = parser.parse_args()
    from tqdm import tqdm

    from speechllm.defaults import load_model
    from speechllm.model.rescore import TurnScorer

    model = load_model(None, [*args.override, "bridge.confidence=null"]).eval()
    if model.recognizer is None or model.config.bridge.beam_size <= 1:
        raise SystemExit("the gate needs the whisper recognizer with beam search (bridge.beam_size > 1)")
    if model.config.bridge.engine != "ctranslate2":
        raise SystemExit("the gate benchmark reads each token's log-probability from CTranslate2 (bridge.engine)")
    scorer = TurnScorer(model.llm, model.processor.tokenizer, model.processor.system_prompt)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        rows = []
        for sample_id, reference, audio in tqdm(dev_samples(name, args), desc=name):
            rows.append({"id": sample_id, "reference": reference, **decode(model, scorer, audio)})
        with open(args.out / f"{name}{'_' + args.tag if args.tag else ''}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        every, none = summary(rows, [True] * len(rows)), summary(rows, [False] * len(rows))
        print(json.dumps({"set": name, "greedy": every, "default": none}))
        for threshold in args.thresholds:
            fast = [r["mean_logp"] >= threshold for r in rows]
            print(json.dumps({"set": name, "threshold": threshold, **summary(rows, fast)}))
        for share in args.shares:
            for signal in [*SIGNALS, "both"]:
                print(json.dumps({"set": name, "share": share, "signal": signal,
                                  **summary(rows, by_share(rows, signal, share))}))  # fmt: skip


if __name__ == "__main__":
    main()
