"""Choose `bridge.rescore` (the weight of the LLM's score of the recognizer's hypotheses) on a
development set that shares no audio, voice engine or question with the held-out sets.

    OMP_NUM_THREADS=1 python benchmarks/rescore_weight.py [--dev shipped|recipe|human] [--num 120] \
        [--weights 0 0.1 0.2 ...] [--bonuses 0 0.5 1 ...] [--candidates 1 2 3] \
        [--override encoder.source=bundled:whisper-base ...]

The weight was chosen (session 8) with the decoder as pretrained, on `--dev shipped` (below). The
recognizer's adapters (`bridge.adapter`, session 14) were trained on the shipped texts these
questions come from, so with them that set is no longer a development set for the recognizer (pass
`bridge.adapter=null` with it). `--dev recipe` is the one that is: the 200 BIG-bench questions that
`recipes/recognizer_adapter.py data` spoke for its own dev set (eSpeak NG voices and Piper `joe`,
augmented; data_out/decoder_adapt/dev_*), never trained on and sharing no text with a held-out one
(`python recipes/recognizer_adapter.py data --sdist ... --dev-only` speaks them alone). `--dev human`:
people of the held-out human set outside the 100 the held-out tables report (`heldout_table.human_dev`,
150 of them): for WER, as people's prompts are rarely questions.

The `shipped` development set: shipped questions (`assets/text/questions.jsonl`) whose text is not one of the
held-out spoken questions, spoken alternately by Piper `joe` and eSpeak NG `en-us` (engines the
training recipes use, never the held-out Festival/flite voices or people). For each, the default
recognizer (Whisper tiny.en, beam `--beam` (5), 30 s window) gives its finished hypotheses; the LLM scores the
best distinct ones (`model.rescore.candidates`, the most `--candidates` asks for) as the user's
turn; for each number of candidates and each weight, the script
counts the questions whose picked transcript equals the question to the letter (what agreement
needs) and the WER; each weight with each word insertion bonus (`--bonuses`, `bridge.word_bonus`:
added per word of a hypothesis, `model.rescore.best_by_llm`). `--override` changes the default's
config first (another recognizer).
Hypotheses and scores: runs/rescore/dev_b<beam>[_<overrides>].jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

RECIPE_DEV = Path("data_out/decoder_adapt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", choices=["shipped", "recipe", "human"], default="shipped")
    parser.add_argument("--num", type=int, default=120)
    parser.add_argument("--heldout", type=Path, default=Path("data_out/heldout/spoken_qa/spoken_qa.jsonl"))
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0])
    parser.add_argument("--bonuses", type=float, nargs="+", default=[0.0],
                        help="word insertion bonuses to try with each weight (bridge.word_bonus)")  # fmt: skip
    parser.add_argument("--beam", type=int, default=5, help="the recognizer's beam width (bridge.beam_size)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[3],
                        help="how many best distinct hypotheses the LLM scores (bridge.candidates)")  # fmt: skip
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("runs/rescore"))
    args = parser.parse_args()
    import torch

    from speechllm.data.audio import load_audio
    from speechllm.data.builders import read_questions, shipped_text
    from speechllm.data.manifest import read_manifest
    from speechllm.data.tts import synthesize
    from speechllm.defaults import load_model
    from speechllm.eval.metrics import wer
    from speechllm.model.bridge import tidy_transcript
    from speechllm.model.rescore import TurnScorer, best_by_llm, candidates
    from speechllm.model.transcriber import encode_windows

    torch.set_num_threads(1)
    held = {s.meta["question"].strip().lower() for s in read_manifest(args.heldout)}
    if args.dev == "shipped":  # (id, voice, question, audio-making callable)
        questions = read_questions(shipped_text("questions.jsonl"))
        questions = [q for q in questions if q.question.strip().lower() not in held]
        random.Random(0).shuffle(questions)
        voices = ["piper:joe", "espeak:en-us"]
        dev = [(q.id, voices[i % 2], q.question, lambda v=voices[i % 2], t=q.question: synthesize(v, t))
               for i, q in enumerate(questions)]  # fmt: skip
    elif args.dev == "human":
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from heldout_table import human_dev

        from speechllm.data.transcripts import spoken_text

        dev = [(s.id, s.voice, spoken_text(s), lambda p=s.audio[0]: load_audio(p))
               for s in human_dev(args.heldout.parent.parent)]  # fmt: skip
    else:
        dev = []
        for part in ("dev_espeak", "dev_piper"):
            manifest = RECIPE_DEV / part / "asr.jsonl"
            if not manifest.is_file():
                raise SystemExit(f"{manifest} is missing: run `python recipes/recognizer_adapter.py data` first")
            dev += [(s.id, s.voice, s.target or "", lambda p=manifest.parent / s.audio[0]: load_audio(p))
                    for s in read_manifest(manifest)]  # fmt: skip
    model = load_model(None, [f"bridge.beam_size={args.beam}", *args.override]).eval()
    recognizer = model.recognizer
    assert recognizer is not None and recognizer.detokenize is not None
    scorer = TurnScorer(model.llm, model.processor.tokenizer, model.processor.system_prompt)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.no_grad():
        for sample_id, voice, question, audio in dev[: args.num]:
            features, lengths = model.processor.log_mel([audio()])
            states, _ = encode_windows(model.encoder, features, lengths)
            found = recognizer.nbest(states[:1], beam_size=args.beam, max_tokens=128)
            texts = [(tidy_transcript(recognizer.detokenize(ids).strip()), lp) for ids, lp in found]
            hyps = candidates(texts, max(args.candidates))
            rows.append({"id": sample_id, "voice": voice, "question": question, "hyps": hyps,
                         "llm": scorer([t for t, _ in hyps])})  # fmt: skip
    tag = "".join("_" + o.split("=")[-1].split(":")[-1] for o in args.override)
    name = {"shipped": "dev", "recipe": "recipedev", "human": "humandev"}[args.dev]
    with open(args.out / f"{name}_b{args.beam}{tag}.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    refs = [r["question"] for r in rows]
    for k in args.candidates:  # the best k of each row's hypotheses (they are stored best first)
        for weight in args.weights:
            for bonus in args.bonuses:
                picks = [best_by_llm([tuple(h) for h in r["hyps"][:k]], r["llm"][:k], weight, bonus) for r in rows]
                exact = sum(p == r for p, r in zip(picks, refs))
                print(json.dumps({"dev": args.dev, "beam": args.beam, "overrides": args.override, "candidates": k,
                                  "weight": weight, "word_bonus": bonus, "n": len(rows), "exact": exact,
                                  "wer": round(wer(refs, picks), 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
