"""Where the token bridge's time to hear a spoken question goes: log-mel, the encoder's window (30 s,
or its `tail` encoding), the recognizer's beam search, the LLM's rescoring of its best hypotheses,
and the whole `SpeechLLM.prepare` (which also embeds the prompt) as a check on their sum. Mean seconds per
question, one thread, the parts run in `prepare`'s order on each question.

    OMP_NUM_THREADS=1 python benchmarks/hearing_time.py --set spoken_qa --num 20 [--override key=value ...]
    OMP_NUM_THREADS=1 python benchmarks/hearing_time.py --bench 5     # `speechllm bench`'s inputs instead

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def question_audios(args: argparse.Namespace) -> tuple[list[np.ndarray], str]:
    """The audio of `--num` questions of the held-out set `--set` (the subset `heldout_table.load_set`
    draws), or of `speechllm bench`'s `--bench` eSpeak inputs; and the set's name as printed."""
    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    from speechllm.data.audio import load_audio

    if args.bench:
        from speechllm.bench import default_inputs
        from speechllm.data.manifest import read_manifest

        with tempfile.TemporaryDirectory() as tmp:
            audios = [load_audio(s.audio[0]) for s in read_manifest(default_inputs(args.bench, Path(tmp)))]
        return audios, f"bench:{args.bench}"
    return [load_audio(s.audio[0]) for s in load_set(args.data, args.name, args.num)], args.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--set", dest="name", default="spoken_qa")
    parser.add_argument("--num", type=int, default=20)
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--bench", type=int, metavar="N", help="time `speechllm bench`'s N eSpeak inputs instead")
    args = parser.parse_args()
    import torch

    from speechllm.defaults import load_model
    from speechllm.model.transcriber import encode_windows

    torch.set_num_threads(1)
    model = load_model(None, args.override).eval()
    recognizer = model.recognizer
    if recognizer is None or recognizer.detokenize is None:
        raise SystemExit("the model's bridge has no whisper recognizer (bridge.recognizer whisper)")
    bridge = model.config.bridge
    audios, args.name = question_audios(args)
    seconds = {"log_mel": 0.0, "encoder": 0.0, "beam_search": 0.0, "rescoring": 0.0, "prepare": 0.0}

    @contextlib.contextmanager
    def timed(part: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        seconds[part] += time.perf_counter() - t0

    with torch.no_grad():
        model.prepare([[{"role": "user", "content": [{"type": "audio", "audio": audios[0]}]}]])  # warm-up
        for audio in audios:
            with timed("log_mel"):
                features, lengths = model.processor.log_mel([audio])
            with timed("encoder"):
                states, _ = encode_windows(model.encoder, features, lengths)
            with timed("beam_search"):
                if model.encoder.config.padding == "tail":  # as transcribe_windows does
                    recognizer.know_window(model.encoder.silence_states())
                found = recognizer.nbest(states[:1], bridge.beam_size, bridge.max_tokens)
            hyps = [(recognizer.detokenize(ids).strip(), logp) for ids, logp in found]
            if bridge.rescore > 0:
                with timed("rescoring"):
                    model._rescored(hyps)
            with timed("prepare"):
                model.prepare([[{"role": "user", "content": [{"type": "audio", "audio": audio}]}]])
    n = len(audios)
    print(json.dumps({"set": args.name, "n": n, "overrides": args.override,
                      **{f"{k}_s": round(v / n, 3) for k, v in seconds.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
