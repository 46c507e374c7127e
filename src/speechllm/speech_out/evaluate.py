"""`speechllm speech eval`: is the speech output intelligible, fast, and flat per step?

- intelligibility: Whisper tiny.en (faster-whisper, greedy) transcribes the speech made from
  each held-out text answer (LLM states by teacher forcing -> speech decoder -> vocoder) and
  we report its WER against the text; for reference, the WER on the TTS recording the units
  came from (`source`), on the vocoder fed those recordings' own units and durations
  (`resynthesis`), and on the same units with predicted durations (`resynthesis_predicted_durations`);
- speed: real-time factor of the speech path (decoder + vocoder seconds per second of audio);
- flatness: mean `SpeechStream.push` time at tokens 1-20 vs 191-210 of a long answer;
- latency: for spoken questions, seconds from the end of the question (its waveform in memory)
  to the first audio chunk, through the real model (encoding, prefill, generation, speech).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from speechllm.data.audio import load_audio, save_wav
from speechllm.data.manifest import read_manifest
from speechllm.eval.metrics import wer
from speechllm.eval.whisper_asr import WhisperTranscriber
from speechllm.model.ctc import run_lengths
from speechllm.speech_out.answers import SAY_PROMPT, answer_states, prompts_from_questions
from speechllm.speech_out.config import SAMPLE_RATE
from speechllm.speech_out.streaming import SpeechOutput, load_speech_output


def intelligibility(speech: SpeechOutput, model: Any, samples: list[Any], out_dir: Path) -> dict[str, Any]:
    judge = WhisperTranscriber()
    prompts = prompts_from_questions()
    states = answer_states(model, [prompts.get(s.target, SAY_PROMPT) for s in samples], [s.target for s in samples])
    rows: list[dict[str, Any]] = []
    speech_seconds = audio_seconds = 0.0
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    for s, (hidden, tokens, _) in tqdm(list(zip(samples, states, strict=True)), desc="speech eval"):
        t = time.perf_counter()
        audio = speech.synthesize(hidden.float(), tokens)
        speech_seconds += time.perf_counter() - t
        audio_seconds += len(audio) / SAMPLE_RATE
        save_wav(out_dir / "wav" / f"{s.id}.wav", audio, SAMPLE_RATE)
        row = {"id": s.id, "text": s.target, "generated": judge(audio), "source": judge(load_audio(s.audio[0]))}
        if s.units:
            units, durations = run_lengths(s.units)
            resynth = speech.vocoder.synthesize(units, torch.tensor(durations))
            row["resynthesis"] = judge(resynth)
            # The same units with durations from the predictor: what the duration predictor costs.
            row["resynthesis_predicted_durations"] = judge(speech.vocoder.synthesize(units))
        rows.append(row)
    with open(out_dir / "per_sample.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    refs = [r["text"] for r in rows]
    figures = {
        "samples": len(rows),
        "wer_generated": wer(refs, [r["generated"] for r in rows]),
        "wer_source_tts": wer(refs, [r["source"] for r in rows]),
        "rtf_speech_path": speech_seconds / max(audio_seconds, 1e-9),
        "audio_seconds": audio_seconds,
    }
    for key in ("resynthesis", "resynthesis_predicted_durations"):
        if all(key in r for r in rows):
            figures[f"wer_{key}"] = wer(refs, [r[key] for r in rows])
    return figures


def step_costs(speech: SpeechOutput, llm_dim: int, tokens: int = 210, seed: int = 0) -> dict[str, float]:
    """Mean push time (ms) at tokens 1-20 and 191-210 of one long stream (random states)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, llm_dim, generator=g)
    ids = torch.randint(100, 1000, (tokens,), generator=g)
    stream = speech.stream()
    times = []
    for i in range(tokens):
        t = time.perf_counter()
        stream.push(hidden[i], int(ids[i]))
        times.append(time.perf_counter() - t)
    stream.finish()
    return {
        "push_ms_tokens_1_20": 1e3 * float(np.mean(times[:20])),
        "push_ms_tokens_191_210": 1e3 * float(np.mean(times[190:210])),
    }


def first_audio_latency(speech: SpeechOutput, model: Any, manifest: str, n: int) -> dict[str, float]:
    """Seconds from a spoken question (in memory) to its first audio chunk, median over n questions."""
    from speechllm.inference.generation import GenerationConfig, eos_token_ids, stream_generate

    eos = eos_token_ids(model)
    latencies, first_tokens = [], []
    for s in read_manifest(manifest)[:n]:
        audio = load_audio(s.audio[0])
        conversation = [{"role": "user", "content": [{"type": "audio", "audio": audio}]}]
        t0 = time.perf_counter()
        batch = model.prepare([conversation])
        stream, states = speech.stream(), list[torch.Tensor]()
        first_token = first_audio = float("nan")
        for step, token in enumerate(stream_generate(model, batch, GenerationConfig(max_new_tokens=60), states.append)):
            if step == 0:
                first_token = time.perf_counter() - t0
            if int(token[0]) in eos:
                break
            if len(stream.push(states[-1][0], int(token[0]))):
                first_audio = time.perf_counter() - t0
                break
        latencies.append(first_audio)
        first_tokens.append(first_token)
    return {
        "first_audio_s_median": float(np.nanmedian(latencies)),
        "first_token_s_median": float(np.median(first_tokens)),
        "questions": float(len(latencies)),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speech", type=Path, help="speech-output folder (default: the embedded default)")
    p.add_argument("--model", help="speech LLM directory (default: the embedded default)")
    p.add_argument("--manifest", help="units manifest of held-out TTS answers (text + audio + units)")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--questions", help="spoken-question manifest for the first-audio latency")
    p.add_argument("--latency-num", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("runs/speech/eval"))


def run(args: argparse.Namespace) -> int:
    from speechllm.defaults import DEFAULT_CHECKPOINT, load_model

    for flag, path in (("--manifest", args.manifest), ("--questions", args.questions)):
        if path and not Path(path).is_file():  # before minutes of work, not after
            raise FileNotFoundError(f"{flag} {path} does not exist")
    model = load_model(args.model).eval()
    directory = args.speech or DEFAULT_CHECKPOINT / "speech"
    speech = load_speech_output(directory, model.llm)
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"speech": str(directory)}

    def save() -> None:  # after each part: a later failure keeps what was measured
        (args.out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")

    if args.manifest:
        figures |= intelligibility(speech, model, read_manifest(args.manifest)[: args.num], args.out)
        save()
    figures |= step_costs(speech, model.llm.config.hidden_size)
    save()
    if args.questions:
        figures |= first_audio_latency(speech, model, args.questions, args.latency_num)
        save()
    print(json.dumps(figures, indent=2))
    return 0
