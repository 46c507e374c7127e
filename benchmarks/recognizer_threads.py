"""How many CPU threads should the CTranslate2 recognizer run on here? The default's time to hear
(`SpeechLLM.prepare`: encoder, beam search, rescoring, the answer's prefill) of the same inputs with
the recognizer on one thread and on torch's count, taken in turn in one process (so a busy moment of
the machine falls on both), beside what `bridge.threads: auto` chose at load and its probe's times.

    OMP_NUM_THREADS=2 python benchmarks/recognizer_threads.py --bench 5 [--rounds 5] [--override ...]
    OMP_NUM_THREADS=2 python benchmarks/recognizer_threads.py --set spoken_qa --num 20

Inputs as benchmarks/hearing_time.py's (`question_audios`; `--bench N`: `speechllm bench`'s eSpeak
questions). `probe_s` are the seconds of the probe that chose at load.
Prints one JSON line: each count's median over rounds of the mean seconds per input, their ratio,
and whether the transcripts were the same on every count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--set", dest="name", default="spoken_qa")
    parser.add_argument("--num", type=int, default=20)
    parser.add_argument("--bench", type=int, metavar="N", help="time `speechllm bench`'s N eSpeak inputs instead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from hearing_time import question_audios

    from speechllm.defaults import load_model
    from speechllm.model.builders import load_recognizer

    model = load_model(None, [*args.override, "bridge.threads=auto"]).eval()
    bridge = model.config.bridge
    if bridge.engine != "ctranslate2" or not bridge.reads_whisper:
        raise SystemExit("the model's recognizer is not run by CTranslate2 (bridge.engine ctranslate2)")
    auto, probe = model.recognizer.threads, model.recognizer.probe or {}  # no probe: torch has one thread
    counts = sorted({1, torch.get_num_threads()})
    decoders = {n: load_recognizer(replace(model.config, bridge=replace(bridge, threads=n))) for n in counts}
    audios, args.name = question_audios(args)
    turns = [[[{"role": "user", "content": [{"type": "audio", "audio": a}]}]] for a in audios]
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    heard: dict[int, list[str]] = {}
    with torch.no_grad():
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for n in counts:
                model.recognizer = decoders[n]
                start = time.perf_counter()
                for turn in turns:
                    model.prepare(turn)
                if rnd:
                    seconds[n].append((time.perf_counter() - start) / len(turns))
                else:
                    heard[n] = [model.hear([a])[0] for a in audios]
    median = {n: statistics.median(s) for n, s in seconds.items()}
    print(json.dumps({
        "set": args.name, "n": len(audios), "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "prepare_s": {n: round(s, 3) for n, s in median.items()},
        "ratio": round(median[counts[-1]] / median[1], 3),
        "auto_chose": auto, "probe_s": {n: round(s, 3) for n, s in probe.items()},
        "same_transcripts": all(h == heard[1] for h in heard.values()), "overrides": args.override,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
