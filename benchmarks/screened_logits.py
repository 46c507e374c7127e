"""Does screening the recognizer's logits in bfloat16 (`bridge.logits: screened`) change what it
hears? The same encoder states are decoded by beam search twice, with exact float32 logits and
screened ones, and every finished hypothesis is compared: texts, order and summed log-probabilities;
beside them the decoder's seconds per utterance both ways (alternating, in one process).

    OMP_NUM_THREADS=1 python benchmarks/screened_logits.py --sets festival festival_tel flite human spoken_qa \
        --limit 100

Same subsets as benchmarks/heldout_table.py (`--limit`). Prints one JSON line per set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="bundled:whisper-tiny.en")
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--sets", nargs="+", default=["festival", "festival_tel", "flite", "human", "spoken_qa"])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    from speechllm.config import EncoderConfig
    from speechllm.data.audio import load_audio
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.model.features import LogMel
    from speechllm.model.transcriber import encode_windows
    from speechllm.model.whisper_decoder import load_whisper_decoder

    torch.set_num_threads(1)
    encoder = load_whisper_encoder(EncoderConfig(source=args.source, padding="30s")).eval()
    exact = load_whisper_decoder(args.source, "float32", "exact")
    screened = load_whisper_decoder(args.source, "float32", "screened")
    log_mel = LogMel(encoder.config.n_mels, pad_to_30s=True)
    for name in args.sets:
        samples = load_set(args.data, name, args.limit)
        same_best = same_lists = 0
        worst = 0.0
        seconds = {"exact": 0.0, "screened": 0.0}
        with torch.no_grad():
            for s in samples:
                features, lengths = log_mel([load_audio(s.audio[0])])
                states, _ = encode_windows(encoder, features, lengths)
                found = {}
                for label, decoder in (("exact", exact), ("screened", screened)):
                    t0 = time.perf_counter()
                    found[label] = [decoder.nbest(states[i : i + 1], args.beam) for i in range(len(states))]
                    seconds[label] += time.perf_counter() - t0
                a, b = found["exact"], found["screened"]
                texts_a = [[ids for ids, _ in hyps] for hyps in a]
                texts_b = [[ids for ids, _ in hyps] for hyps in b]
                same_lists += texts_a == texts_b
                same_best += [max(h, key=lambda x: x[1])[0] for h in a] == [max(h, key=lambda x: x[1])[0] for h in b]
                if texts_a == texts_b:
                    diffs = [abs(x[1] - y[1]) for ha, hb in zip(a, b) for x, y in zip(ha, hb)]
                    worst = max(worst, *diffs)
        n = len(samples)
        print(json.dumps({
            "set": name, "n": n, "same_nbest": same_lists, "same_best": same_best,
            "max_logp_diff": round(worst, 5),
            "decoder_s_exact": round(seconds["exact"] / n, 4), "decoder_s_screened": round(seconds["screened"] / n, 4),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
