"""What a token-bridge model's LLM reads for each audio of a held-out set (`model.hear`, as
`speechllm transcribe` returns it), next to the reference: the transcript file that
benchmarks/agreement_causes.py reads, for any model and overrides (rescoring included).

    OMP_NUM_THREADS=1 python benchmarks/heard_transcripts.py --set spoken_qa [--override key=value ...] \
        --out runs/recognizer/default_spoken_qa_heard.jsonl

Same subsets as benchmarks/heldout_table.py (`--limit`); references: the typed question
(`meta.question`) or the spoken text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a speechllm checkpoint directory (default: the embedded model)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--set", dest="name", default="spoken_qa")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    from speechllm.data.audio import load_audio
    from speechllm.data.transcripts import spoken_text
    from speechllm.defaults import load_model
    from speechllm.eval.metrics import wer

    torch.set_num_threads(1)
    model = load_model(args.model, args.override).eval()
    samples = load_set(args.data, args.name, args.limit)
    refs, hyps = [], []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f, torch.no_grad():
        for s in samples:
            ref = s.meta.get("question") or spoken_text(s)
            hyp = model.hear([load_audio(s.audio[0])])[0]
            refs.append(ref)
            hyps.append(hyp)
            f.write(json.dumps({"id": s.id, "reference": ref, "hypothesis": hyp}) + "\n")
    exact = sum(h == r for h, r in zip(hyps, refs))
    print(json.dumps({"set": args.name, "n": len(refs), "exact": exact, "wer": round(wer(refs, hyps), 4)}))


if __name__ == "__main__":
    main()
