"""Spoken answers to held-out spoken questions, end to end, as `speechllm chat --speak` makes them.

    OMP_NUM_THREADS=1 python benchmarks/spoken_answer_speech.py \\
        --questions data_out/heldout/spoken_qa/spoken_qa.jsonl --num 100 --out runs/speech/spoken_answers

The default model (`speechllm.defaults.load_model()`) and the default speech output (loaded as the
CLI loads it) run in an `Engine` (max_batch 1, as `chat`): each question's waveform is submitted
with speak=True and the events are read as they come. Per answer: seconds from the submit (the
question's waveform in memory) to the first text piece and to the first audio chunk, in the same
request. Then, in the same run:
- intelligibility: Whisper tiny.en (faster-whisper, beam 5) transcribes the streamed audio of
  each answer; WER against the words the voice says for the answer's own text (`speech_out.judge`:
  `1 + 1` is "1 plus 1", words in brackets are said), over all answers and over the judgeable ones
  (English, not a repetition loop: `benchmarks/speech_eval_table.py:judgeable`);
- the reference: the same answer texts rendered by the same voice one sentence at a time, the
  way Piper itself speaks a text (whole text phonemized by eSpeak NG, one voice call a sentence):
  the voice on its own known-good input, so the gap to it is what streaming costs;
- streaming cost per token: one speech stream fed the answers' tokens joined (real answers, as
  the engine pushes them), mean push time at tokens 1-20 vs 191-210;
- where the time to the first audio goes: per answer, the tokens pushed before the first audio
  and the seconds spent inside the speech stream's pushes until then.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


class TimedSpeech:
    """A speech output whose streams record every push: (seconds since the stream began, seconds
    inside the push, samples returned). The engine sees the wrapped output unchanged."""

    def __init__(self, speech: Any) -> None:
        self.speech = speech
        self.sample_rate = speech.sample_rate
        self.decoder = speech.decoder
        self.log: list[tuple[float, float, int]] = []
        self.tokens: list[int] = []
        """The last stream's pushes and tokens."""

    def eval(self) -> TimedSpeech:
        self.speech.eval()
        return self

    def stream(self) -> TimedStream:
        stream = TimedStream(self.speech.stream(), [])
        self.log, self.tokens = stream.log, stream.tokens
        return stream


class TimedStream:
    def __init__(self, stream: Any, log: list[tuple[float, float, int]]) -> None:
        self.stream, self.log = stream, log
        self.tokens: list[int] = []

    def push(self, hidden: Any, token: int) -> np.ndarray:
        t = time.perf_counter()
        audio = self.stream.push(hidden, token)
        self.log.append((t, time.perf_counter() - t, len(audio)))
        self.tokens.append(token)
        return audio

    def finish(self) -> np.ndarray:
        return self.stream.finish()


def answer(engine: Any, timed: TimedSpeech, audio: np.ndarray, max_new_tokens: int) -> dict[str, Any]:
    """One spoken question through the engine; the answer, its streamed audio and its timings."""
    from speechllm.inference.engine import Audio, Delta, Done
    from speechllm.inference.generation import GenerationConfig

    t0 = time.perf_counter()
    request = engine.submit(
        [{"role": "user", "content": [{"type": "audio", "audio": audio}]}],
        GenerationConfig(max_new_tokens=max_new_tokens),
        speak=True,
    )
    first_text = first_audio = float("nan")
    text = ""
    chunks: list[np.ndarray] = []
    for event in request.events():
        now = time.perf_counter() - t0
        if isinstance(event, Delta) and np.isnan(first_text):
            first_text = now
        elif isinstance(event, Audio):
            first_audio = now if np.isnan(first_audio) else first_audio
            chunks.append(event.samples)
        elif isinstance(event, Done):
            text = event.text
    before = next((i for i, (_, _, n) in enumerate(timed.log) if n), len(timed.log) - 1)
    return {
        "text": text.strip(),
        "audio": np.concatenate(chunks) if chunks else np.zeros(0, np.float32),
        "first_text_s": first_text,
        "first_audio_s": first_audio,
        "tokens_to_first_audio": before + 1,
        "push_s_to_first_audio": sum(d for _, d, _ in timed.log[: before + 1]),
        "first_push_s": timed.log[before][1] if timed.log else float("nan"),
        # between pushes: the LLM's decode step (and the engine's bookkeeping), not the speech stream
        "decode_step_s": [b[0] - a[0] - a[1] for a, b in zip(timed.log, timed.log[1:])],
        "tokens": list(timed.tokens),
    }


def push_costs(speech: Any, token_lists: list[list[int]], tokens: int = 210) -> dict[str, float]:
    """Mean and median push time (ms) at tokens 1-20 and 191-210 of one stream fed the answers' tokens joined."""
    joined = [t for ts in token_lists for t in ts]
    if not joined:
        raise ValueError("push costs need answer tokens, the answers hold none")
    ids = (joined * (1 + tokens // len(joined)))[:tokens]  # repeated only when fewer answers than that were asked
    stream = speech.stream()
    times = []
    for token in ids:
        t = time.perf_counter()
        stream.push(None, token)
        times.append(time.perf_counter() - t)
    stream.finish()
    return {
        "push_ms_tokens_1_20": 1e3 * float(np.mean(times[:20])),
        "push_ms_tokens_191_210": 1e3 * float(np.mean(times[190:])),
        # the mean counts the phrases rendered in each window; the median is a push that renders none
        "push_ms_median_tokens_1_20": 1e3 * float(np.median(times[:20])),
        "push_ms_median_tokens_191_210": 1e3 * float(np.median(times[190:])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=Path("data_out/heldout/spoken_qa/spoken_qa.jsonl"))
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("runs/speech/spoken_answers"))
    args = parser.parse_args()
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from speech_eval_table import judgeable

    from speechllm.cli.run import load_default_speech_output
    from speechllm.data.audio import load_audio, save_wav
    from speechllm.data.manifest import read_manifest
    from speechllm.defaults import load_model
    from speechllm.eval.whisper_asr import WhisperTranscriber
    from speechllm.inference.engine import Engine
    from speechllm.speech_out.judge import spoken_wer
    from speechllm.speech_out.piper_voice import PiperVoice

    torch.set_num_threads(1)
    samples = read_manifest(args.questions)[: args.num]
    if len(samples) < args.num:
        raise ValueError(f"--num {args.num} but {args.questions} holds {len(samples)} questions")
    model = load_model()
    t = time.perf_counter()
    speech = load_default_speech_output(model)
    load_s = time.perf_counter() - t
    timed = TimedSpeech(speech)
    rows: list[dict[str, Any]] = []
    with Engine(model, speech=timed, max_batch=1, max_queue=1) as engine:  # type: ignore[arg-type]
        for s in samples:
            row = {
                "id": s.id,
                "question": s.meta.get("question", ""),
                **answer(engine, timed, load_audio(s.audio[0]), args.max_new_tokens),
            }
            rows.append(row)
            print(
                f"{s.id} text {row['first_text_s']:.2f}s audio {row['first_audio_s']:.2f}s: {row['text'][:70]!r}",
                flush=True,
            )
    costs = push_costs(speech, [r["tokens"] for r in rows])

    voice = speech.voice
    whole = PiperVoice(dataclasses.replace(voice.config, first_chunk_words=10_000, chunk_words=10_000))
    judge = WhisperTranscriber(beam_size=5)
    (args.out / "wav").mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["heard"] = judge(r["audio"])
        r["reference_heard"] = judge(whole.synthesize(whole.inventory.encode(r["text"])) if r["text"] else np.zeros(0))
        save_wav(args.out / "wav" / f"{r['id']}.wav", r["audio"], speech.sample_rate)
        r["audio_s"] = len(r.pop("audio")) / speech.sample_rate
    kept = [r for r in rows if judgeable(r["text"])]
    first_text = np.array([r["first_text_s"] for r in rows])
    first_audio = np.array([r["first_audio_s"] for r in rows])
    summary = {
        "answers": len(rows),
        "judgeable": len(kept),
        "wer_all": spoken_wer([r["text"] for r in rows], [r["heard"] for r in rows]),
        "wer_judgeable": spoken_wer([r["text"] for r in kept], [r["heard"] for r in kept]),
        "reference_wer_all": spoken_wer([r["text"] for r in rows], [r["reference_heard"] for r in rows]),
        "reference_wer_judgeable": spoken_wer([r["text"] for r in kept], [r["reference_heard"] for r in kept]),
        "first_text_s_median": float(np.nanmedian(first_text)),
        "first_audio_s_median": float(np.nanmedian(first_audio)),
        "first_audio_over_first_text_median": float(np.nanmedian(first_audio / first_text)),
        "tokens_to_first_audio_median": float(np.median([r["tokens_to_first_audio"] for r in rows])),
        "push_s_to_first_audio_median": float(np.median([r["push_s_to_first_audio"] for r in rows])),
        "first_audio_push_s_median": float(np.nanmedian([r["first_push_s"] for r in rows])),
        "decode_step_s_median": float(np.median([d for r in rows for d in r["decode_step_s"]])),
        "speech_load_s": load_s,
        "voice": dataclasses.asdict(voice.config),
        "max_new_tokens": args.max_new_tokens,
        **costs,
    }
    with open(args.out / "per_answer.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
