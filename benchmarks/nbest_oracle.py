"""How often the typed question is among a recognizer's finished hypotheses, and among two
recognizers' together: the most that rescoring (`bridge.rescore`) or merging two recognizers'
hypotheses could ever make letter-perfect, which is what agreement rests on.

    OMP_NUM_THREADS=1 python benchmarks/nbest_oracle.py --set spoken_qa \
        --recognizer tiny: --recognizer "base:encoder.source=bundled:whisper-base encoder.d_model=512 \
            encoder.n_layers=6 encoder.n_heads=8 encoder.ffn_dim=2048 bridge.adapter=null"

Each `--recognizer NAME:OVERRIDES` is the default model with those overrides (none: the default).
For every question (same subsets as benchmarks/heldout_table.py, `--limit`) it records what the
model hears (`model.hear`: the rescored pick) and the beam's finished hypotheses as `bridge.tidy`
writes them; then prints per recognizer how many picks equal the typed question (`exact`) and how
many questions hold it among their best 3 distinct hypotheses (what rescoring reads) or among all
(`in_beam`), the same over the union of every recognizer's hypotheses, and the questions only one
recognizer's beam holds. Hypotheses: runs/recognizer/nbest_<set>_<name>.jsonl (made once, reused).

`--merge-weights` (with two recognizers) picks from the pool of each one's best 3 distinct hypotheses
by `weight` * the LLM's log-probability of it as the user's turn (`TurnScorer`) + the mean over the
recognizers of their log-probability of it: its best among that recognizer's finished hypotheses,
or, where the recognizer did not finish it, that recognizer's worst minus `--floors` (each value
tried; `model.merge`, what `bridge.merge_with` runs with `bridge.rescore` and `bridge.merge_floor`);
and prints the letter-perfect picks and WER of each setting, and those of the questions whose typed
form holds no number word or "colour" (`agreement_causes.styled`).
`--answer N` then has the LLM answer the first setting's picks (one recognizer: its own) and the
typed questions (greedy, N tokens) and prints agreement (`metrics.same_first_sentence`) and accuracy
as benchmarks/heldout_table.py counts them. A pick is answered as typed text: the token bridge
(`top1`) gives the LLM exactly the transcript's tokens, which is why letter-perfect transcripts
always agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def reference(sample: Any) -> str:
    """What a letter-perfect transcript equals: the typed question, or the spoken text."""
    return str(sample.meta.get("question") or sample.target or "")


def samples_of(name: str, data: Path, limit: int | None) -> list[Any]:
    """A held-out set (benchmarks/heldout_table.py's subsets), or `recipe`: the 200 development
    questions of `recipes/recognizer_adapter.py data` (eSpeak NG and Piper `joe`, never trained on)."""
    from heldout_table import load_set

    from speechllm.data.manifest import read_manifest

    if name != "recipe":
        return load_set(data, name, limit)
    parts = [RECIPE_DEV / part / "asr.jsonl" for part in ("dev_espeak", "dev_piper")]
    if not all(p.is_file() for p in parts):
        raise SystemExit(f"{parts[0].parent.parent} lacks the dev sets: `python recipes/recognizer_adapter.py data "
                         "--sdist ... --dev-only`")  # fmt: skip
    return [s for p in parts for s in read_manifest(p)][:limit]


RECIPE_DEV = Path("data_out/decoder_adapt")


def dump(name: str, overrides: list[str], samples: list[Any], out: Path) -> list[dict[str, Any]]:
    """Each sample's pick and finished hypotheses (tidied, best first) under the recognizer."""
    if out.is_file():
        return [json.loads(line) for line in out.read_text().splitlines() if line]
    import torch

    from speechllm.data.audio import load_audio
    from speechllm.defaults import load_model
    from speechllm.model.bridge import tidy_transcript

    torch.set_num_threads(1)
    model = load_model(None, overrides).eval()
    if model.config.bridge.rescore <= 0 or model.config.bridge.beam_size <= 1:
        raise SystemExit(f"{name}: needs beam search with rescoring (bridge.beam_size > 1, bridge.rescore > 0)")
    choose = model._rescored
    seen: dict[str, list[tuple[str, float]]] = {}

    def recording(hypotheses: list[tuple[str, float]]) -> str:
        seen["hyps"] = hypotheses
        return choose(hypotheses)

    model._rescored = recording  # type: ignore[method-assign]  # what transcribe_features passes on
    rows = []
    with torch.no_grad():
        for s in samples:
            seen.clear()
            start = time.perf_counter()
            heard = model.hear([load_audio(s.audio[0])])[0]
            hyps = [(tidy_transcript(t), lp) for t, lp in seen.get("hyps", [(heard, 0.0)])]
            rows.append({"id": s.id, "question": reference(s), "heard": heard, "hyps": hyps,
                         "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--set", default="spoken_qa")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--recognizer", action="append", required=True, metavar="NAME:OVERRIDES")
    parser.add_argument("--out", type=Path, default=Path("runs/recognizer"))
    parser.add_argument("--merge-weights", type=float, nargs="*", default=[])
    parser.add_argument("--floors", type=float, nargs="+", default=[1.0])
    parser.add_argument("--answer", type=int, metavar="MAX_NEW_TOKENS",
                        help="answer the first merge setting's picks and the typed questions")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from speechllm.eval.metrics import wer
    from speechllm.model.rescore import candidates

    samples = samples_of(args.set, args.data, args.limit)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in args.recognizer:
        name, _, overrides = spec.partition(":")
        dumped = dump(name, overrides.split(), samples, args.out / f"nbest_{args.set}_{name}.jsonl")
        runs[name] = {r["id"]: r for r in dumped}
    beams = {n: {i: {t for t, _ in r["hyps"]} for i, r in by_id.items()} for n, by_id in runs.items()}
    for name, by_id in runs.items():
        rows = list(by_id.values())
        print(json.dumps({"recognizer": name, "n": len(rows),
                          "exact": sum(r["heard"] == r["question"] for r in rows),
                          "in_best_3": sum(r["question"] in [t for t, _ in candidates([tuple(h) for h in r["hyps"]], 3)]
                                           for r in rows),
                          "in_beam": sum(r["question"] in beams[name][r["id"]] for r in rows),
                          "wer": round(wer([r["question"] for r in rows], [r["heard"] for r in rows]), 4),
                          "seconds": round(sum(r["seconds"] for r in rows) / len(rows), 3)}))  # fmt: skip
    ids = [s.id for s in samples]
    question = {i: next(iter(runs.values()))[i]["question"] for i in ids}
    union = sum(any(question[i] in beams[n][i] for n in runs) for i in ids)
    print(json.dumps({"recognizer": "+".join(runs), "n": len(ids), "in_beam": union}))
    for name in runs if len(runs) > 1 else []:
        only = [question[i] for i in ids if question[i] in beams[name][i]
                and not any(question[i] in beams[m][i] for m in runs if m != name)]  # fmt: skip
        print(json.dumps({"only_in": name, "count": len(only), "questions": only}))
    if args.merge_weights and len(runs) > 1:
        picks = merge(runs, ids, question, args)
        if args.answer:
            answer(picks, samples, args.answer)
    elif args.answer:  # one recognizer: its own picks, as `model.hear` gave them
        answer({i: r["heard"] for i, r in next(iter(runs.values())).items()}, samples, args.answer)


def cached(scores: list[float]) -> Callable[[list[str]], list[float]]:
    """The LLM's scores of a pool, computed before (in the pool's order)."""
    return lambda pool: scores


def merge(runs: dict[str, dict[str, dict[str, Any]]], ids: list[str], question: dict[str, str],
          args: argparse.Namespace) -> dict[str, str]:  # fmt: skip
    """Rescore the pool of two recognizers' best hypotheses with the LLM (`model.merge`, as
    `bridge.merge_with` does; see the module's doc)."""
    import torch
    from agreement_causes import styled

    from speechllm.defaults import load_model
    from speechllm.eval.metrics import wer
    from speechllm.model.merge import merged_pick, pooled
    from speechllm.model.rescore import TurnScorer
    from speechllm.model.speech_llm import SILENT_TEXT

    if len(runs) != 2:
        raise SystemExit(f"--merge-weights pools two recognizers, got {len(runs)}")
    first, second = ([[(t, lp) for t, lp in rows[i]["hyps"]] for i in ids] for rows in runs.values())
    pools = [pooled(a, b, 3) for a, b in zip(first, second)]
    cache = args.out / f"nbest_{args.set}_{'+'.join(runs)}_llm.json"
    if cache.is_file():
        llm = json.loads(cache.read_text())
    else:
        torch.set_num_threads(1)
        model = load_model(None, ["bridge.threads=1"]).eval()
        scorer = TurnScorer(model.llm, model.processor.tokenizer, model.processor.system_prompt)
        llm = {i: scorer([t or SILENT_TEXT for t in pool]) for i, pool in zip(ids, pools)}
        cache.write_text(json.dumps(llm), encoding="utf-8")
    plain = [i for i in ids if not styled(question[i])]
    chosen: dict[str, str] = {}
    for weight in args.merge_weights:
        for floor in args.floors:
            picks = {i: merged_pick(a, b, 3, cached(llm[i]), weight, floor)[0] for i, a, b in zip(ids, first, second)}
            chosen = chosen or picks
            print(json.dumps({"merged": "+".join(runs), "weight": weight, "floor": floor, "n": len(ids),
                              "exact": sum(picks[i] == question[i] for i in ids),
                              "wer": round(wer([question[i] for i in ids], [picks[i] for i in ids]), 4),
                              "plain_n": len(plain),
                              "plain_exact": sum(picks[i] == question[i] for i in plain)}))  # fmt: skip
    return chosen


def answer(picks: dict[str, str], samples: list[Any], max_new_tokens: int) -> None:
    """Agreement and accuracy of the LLM's answers to the picks against its answers to the typed questions."""
    from agreement_causes import styled

    from speechllm.defaults import load_model
    from speechllm.eval.metrics import answer_found, same_first_sentence
    from speechllm.eval.runner import model_answerer

    ask = model_answerer(load_model(None, ["bridge.threads=1"]).eval(), max_new_tokens)
    typed = [str(s.meta["question"]) for s in samples]
    answers = ask([[{"role": "user", "content": t}] for t in typed])
    heard = [picks[s.id] for s in samples]
    todo = [i for i, (h, t) in enumerate(zip(heard, typed)) if h != t]  # a letter-perfect pick reads as typed
    spoken = list(answers)
    for i, text in zip(todo, ask([[{"role": "user", "content": heard[i]}] for i in todo])):
        spoken[i] = text
    for name, keep in (("all", lambda t: True), ("plain", lambda t: not styled(t))):
        rows = [i for i, t in enumerate(typed) if keep(t)]
        right = [sum(answer_found(a[i], samples[i].meta["answer"]) for i in rows) for a in (spoken, answers)]
        agree = sum(same_first_sentence(spoken[i], answers[i]) for i in rows)
        print(json.dumps({"questions": name, "n": len(rows), "agreement": round(agree / len(rows), 4),
                          "spoken_correct": right[0], "typed_correct": right[1],
                          "spoken_over_typed": round(right[0] / right[1], 4) if right[1] else None}))  # fmt: skip


if __name__ == "__main__":
    main()
