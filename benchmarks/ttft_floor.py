"""The floor under any connector that reads Whisper's 30 s window before the LLM's prompt, against the
cascade's time to first token, on `speechllm bench`'s inputs, in one process, one thread.

    OMP_NUM_THREADS=1 python benchmarks/ttft_floor.py [--n 5] [--override key=value ...] [--json OUT]

Per input (after one untimed warm-up), three parts are timed:
- `encoder_s`: log-mel + the default model's Whisper encoder over the 30 s window, or its `tail`
  (what every whisper-bridge configuration runs before its recognizer, and what the cascade's
  faster-whisper runs too, there in int8, over the 30 s window);
- `llm_ttft_s`: the model's LLM from the rendered prompt of the question's text to its first token,
  with the bench's prompt reuse (the system turn's keys kept): what the LLM needs at least once the
  question is known, however it was heard;
- `cascade_asr_s`: faster-whisper (the same tiny.en weights, int8, greedy) transcribing the audio,
  as `speechllm bench`'s cascade does.

`floor_ratio` = (encoder_s + llm_ttft_s) / (cascade_asr_s + llm_ttft_s): the time to first token of a
bridge whose recognizer cost nothing, over the cascade's. A design below it must not encode the 30 s
window (the real length and 10 s windows cost the decoder words: README, Figures) or must not need
the LLM's prompt after hearing. `--override encoder.padding=tail` times the `tail` encoding instead
(the real length and 1 s of silence, the window completed by a silent window's states).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5, help="bench inputs (the longest shipped questions, eSpeak)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch
    from faster_whisper import WhisperModel

    from speechllm.bench import ASR_SOURCE, default_inputs
    from speechllm.data.audio import load_audio
    from speechllm.data.manifest import read_manifest
    from speechllm.defaults import load_model
    from speechllm.inference.generation import GenerationConfig, eos_token_ids, generate_tokens
    from speechllm.inference.prompt_cache import PromptCache
    from speechllm.model.transcriber import encode_windows
    from speechllm.weights.whisper import resolve_encoder_source

    torch.set_num_threads(1)
    model = load_model(None, args.override).eval()
    asr = WhisperModel(str(resolve_encoder_source(ASR_SOURCE)), device="cpu", compute_type="int8", cpu_threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        samples = read_manifest(default_inputs(args.n, Path(tmp)))
        audios = [load_audio(s.audio[0]) for s in samples]
    processor, embed = model.processor, model.llm.get_input_embeddings()
    eos, pad = eos_token_ids(model), processor.tokenizer.pad_token_id
    reuse = PromptCache()
    seconds: dict[str, list[float]] = {"encoder_s": [], "llm_ttft_s": [], "cascade_asr_s": []}

    @contextlib.contextmanager
    def timed(part: str, keep: bool) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if keep:
            seconds[part].append(time.perf_counter() - t0)

    def first_token(question: str) -> None:
        ids = torch.tensor([processor.render([{"role": "user", "content": question}]).input_ids])  # 1, L
        steps = generate_tokens(model.llm, embed(ids).detach(), torch.ones_like(ids),
                                GenerationConfig(max_new_tokens=1), eos=eos, pad_id=pad, reuse=reuse)  # fmt: skip
        next(iter(steps))

    with torch.no_grad():
        for i, (sample, audio) in enumerate([(samples[0], audios[0]), *zip(samples, audios)]):
            keep = i > 0  # the first input warms up, untimed
            with timed("encoder_s", keep):
                encode_windows(model.encoder, *processor.log_mel([audio]))
            with timed("llm_ttft_s", keep):
                first_token(sample.meta["question"])
            with timed("cascade_asr_s", keep):
                segments, _ = asr.transcribe(audio, language="en", beam_size=1, vad_filter=False)
                list(segments)  # segments is lazy: this decodes
    means = {part: statistics.mean(values) for part, values in seconds.items()}
    floor = means["encoder_s"] + means["llm_ttft_s"]
    cascade = means["cascade_asr_s"] + means["llm_ttft_s"]
    result = {"n": args.n, "overrides": args.override, **{k: round(v, 4) for k, v in means.items()},
              "floor_ttft_s": round(floor, 4), "cascade_ttft_s": round(cascade, 4),
              "floor_ratio": round(floor / cascade, 3)}  # fmt: skip
    print(json.dumps(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
