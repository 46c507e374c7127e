"""The whisper recognizer's variants on the held-out sets, without the LLM: WER, transcripts equal to
the typed question (before and after `bridge.tidy`), and seconds per utterance.

    OMP_NUM_THREADS=1 python benchmarks/recognizer_variants.py --source bundled:whisper-tiny.en \
        --sets festival human spoken_qa --window 30s --beams 5 1 [--prompt "Hello. What time is it?"]

Same subsets as benchmarks/heldout_table.py (`--limit`, a fixed random subset), same WER
(`eval.metrics.wer`, normalised). `--window real` encodes the audio at its real length instead of
Whisper's 30 s window (about 10x less encoder work on a 3 s question), `--window 10s` / `20s` over
the audio padded with silence to that length; `--precision bfloat16` runs the text decoder under
bfloat16 (`bridge.precision`), `--encoder-precision bfloat16` the encoder's layers under bfloat16
autocast (`encoder.precision`), `--logits screened` the decoder's logits screened in bfloat16
(`bridge.logits`); `--prompt` gives Whisper a previous-text prompt (`<|startofprev|>`), which steers
its style. Transcripts are written to
`runs/recognizer/<source>_<set>_<window>_b<beam>[_prompt][_bf16][_encbf16][_screened].jsonl`.
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
    parser.add_argument("--sets", nargs="+", default=["festival", "human", "spoken_qa"])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--window", choices=["30s", "20s", "10s", "real"], default="30s",
                        help="30s: Whisper's window; 20s / 10s: audio silence-padded to that length and "
                        "encoded whole (a shorter window); real: the audio's own length")  # fmt: skip
    parser.add_argument("--beams", type=int, nargs="+", default=[5])
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="float32",
                        help="compute precision of the text decoder (bridge.precision)")  # fmt: skip
    parser.add_argument("--encoder-precision", choices=["auto", "float32", "bfloat16"], default="float32",
                        help="compute precision of the encoder (encoder.precision)")  # fmt: skip
    parser.add_argument("--logits", choices=["exact", "screened", "auto"], default="exact",
                        help="the float32 decoder's logits (bridge.logits)")  # fmt: skip
    parser.add_argument("--prompt", default="", help="a previous-text prompt for Whisper (default: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/recognizer"))
    args = parser.parse_args()
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    from speechllm.config import EncoderConfig
    from speechllm.data.audio import load_audio
    from speechllm.data.transcripts import spoken_text
    from speechllm.eval.metrics import wer
    from speechllm.model.bridge import tidy_transcript
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.model.features import LogMel
    from speechllm.model.precision import resolve_precision
    from speechllm.model.transcriber import encode_windows
    from speechllm.model.whisper_decoder import load_whisper_decoder
    from speechllm.weights.whisper_decoder import read_whisper_decoder

    torch.set_num_threads(1)
    short = args.window in ("20s", "10s")  # encoded at real length over the silence-padded audio
    padding = "real" if short else args.window
    config = EncoderConfig(source=args.source, padding=padding, precision=args.encoder_precision)
    encoder = load_whisper_encoder(config).eval()
    decoder = load_whisper_decoder(args.source, args.precision, args.logits)
    if args.prompt:
        tokenizer = read_whisper_decoder(args.source)[2]
        previous = [tokenizer.token_to_id("<|startofprev|>"), *tokenizer.encode(" " + args.prompt.strip()).ids]
        decoder.arch.prompt = previous + decoder.arch.prompt
    log_mel = LogMel(encoder.config.n_mels, pad_to_30s=args.window == "30s")  # silence padding, as the model
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        samples = load_set(args.data, name, args.limit)
        refs = [s.meta.get("question") or spoken_text(s) for s in samples]
        states, t0 = [], time.perf_counter()
        cpu = torch.device("cpu")
        with torch.no_grad():
            for s in samples:
                audio = load_audio(s.audio[0])
                if short:
                    audio = np.pad(audio, (0, max(0, int(args.window[:-1]) * 16000 - len(audio))))
                features, lengths = log_mel([audio])
                if args.window == "30s":
                    states.append(encode_windows(encoder, features, lengths)[0])
                else:
                    states.append(encoder(features, lengths)[0])
        encode_s = (time.perf_counter() - t0) / len(samples)
        for beam in args.beams:
            t0 = time.perf_counter()
            with torch.no_grad():
                hyps = [" ".join(t for t in decoder.transcribe(h, beam_size=beam) if t) for h in states]
            decode_s = (time.perf_counter() - t0) / len(samples)
            precision = resolve_precision(args.precision, cpu)
            encoder_precision = resolve_precision(args.encoder_precision, cpu)
            tag = f"{args.source.split(':')[-1]}_{name}_{args.window}_b{beam}" + ("_prompt" if args.prompt else "")
            tag += "_bf16" if precision == "bfloat16" else ""
            tag += "_encbf16" if encoder_precision == "bfloat16" else ""
            tag += "_screened" if decoder.screen_table is not None else ""
            with open(args.out / f"{tag}.jsonl", "w", encoding="utf-8") as f:
                for s, r, h in zip(samples, refs, hyps):
                    f.write(json.dumps({"id": s.id, "reference": r, "hypothesis": h}) + "\n")
            row = {"source": args.source, "set": name, "n": len(samples), "window": args.window, "beam": beam,
                   "precision": precision, "encoder_precision": encoder_precision, "logits": args.logits,
                   "prompt": bool(args.prompt), "wer": round(wer(refs, hyps), 4),
                   "exact": sum(h == r for h, r in zip(hyps, refs)),
                   "exact_tidy": sum(tidy_transcript(h) == r for h, r in zip(hyps, refs)),
                   "encode_s": round(encode_s, 3), "decode_s": round(decode_s, 3)}  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
