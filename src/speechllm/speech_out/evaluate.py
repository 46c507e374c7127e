"""`speechllm speech eval`: is the speech output intelligible, fast, and flat per step?

With `--questions` (spoken questions), the phoneme path, the text-to-speech cascade and the
k-means path voice the same answers in one run (speechllm.speech_out.compare). With `--manifest`
(k-means only, the earlier evaluation on reference answers):
- intelligibility: Whisper tiny.en (faster-whisper, greedy) transcribes the speech made from
  each held-out text answer (LLM states by teacher forcing -> speech decoder -> vocoder) and
  we report its WER against the words said for the text (`speech_out.judge`); for reference, the
  WER on the TTS recording the units came from (`source`), on the vocoder fed those recordings'
  own units and durations (`resynthesis`), and on the same units with predicted durations
  (`resynthesis_predicted_durations`);
- speed: real-time factor of the speech path (decoder + vocoder seconds per second of audio).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from speechllm.config import SAMPLE_RATE
from speechllm.data.audio import load_audio, save_wav
from speechllm.data.manifest import read_manifest
from speechllm.eval.whisper_asr import WhisperTranscriber
from speechllm.model.ctc import run_lengths
from speechllm.speech_out.answers import SAY_PROMPT, answer_states, prompts_from_questions
from speechllm.speech_out.judge import spoken_wer
from speechllm.speech_out.streaming import SpeechOutput, load_speech_output
from speechllm.speech_out.vocoder import UnitVocoder


def intelligibility(speech: SpeechOutput, model: Any, samples: list[Any], out_dir: Path) -> dict[str, Any]:
    """k-means speech of reference answers (teacher forcing), with the vocoder's resynthesis figures."""
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
            if not isinstance(speech.vocoder, UnitVocoder):
                raise ValueError(f"{s.id}: resynthesis of k-means units needs a unit vocoder, this output has none")
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
        "wer_generated": spoken_wer(refs, [r["generated"] for r in rows]),
        "wer_source_tts": spoken_wer(refs, [r["source"] for r in rows]),
        "rtf_speech_path": speech_seconds / max(audio_seconds, 1e-9),
        "audio_seconds": audio_seconds,
    }
    for key in ("resynthesis", "resynthesis_predicted_durations"):
        if all(key in r for r in rows):
            figures[f"wer_{key}"] = spoken_wer(refs, [r[key] for r in rows])
    return figures


EVAL_PATHS = ("phonemes", "text_tts", "text_tts_whole", "kmeans")


@dataclass
class SpeechEvalConfig:
    """What `speechllm speech eval` measures (`run`)."""

    speech: Path | None = None
    """Speech-output folder with a decoder (None: the embedded k-means option)."""
    kmeans: Path | None = None
    """A k-means speech-output folder to compare in the same run."""
    model: str | None = None
    """Speech LLM directory (None: the embedded default)."""
    questions: str | None = None
    """Spoken-question manifest: answers voiced every way, WER, latency, real-time factor."""
    num: int = 100
    """Spoken questions (and `manifest` answers) to voice."""
    max_new_tokens: int = 64
    latency_num: int = 10
    """Questions timed per path (0: none)."""
    answers_only: bool = False
    """Generate and keep the answers, voice nothing."""
    paths: list[str] = field(default_factory=list)
    """Voice only these of EVAL_PATHS (empty: all the folders allow); figures add to summary.json."""
    manifest: str | None = None
    """k-means only: units manifest of held-out TTS answers (resynthesis figures)."""
    out: Path = Path("runs/speech/eval")

    def __post_init__(self) -> None:
        for name in ("num", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"speech eval: {name} must be >= 1, got {getattr(self, name)}")
        if self.latency_num < 0:
            raise ValueError(f"speech eval: latency_num must be >= 0, got {self.latency_num}")
        unknown = [p for p in self.paths if p not in EVAL_PATHS]
        if unknown:
            raise ValueError(f"speech eval: unknown paths {unknown}; expected some of {list(EVAL_PATHS)}")
        self.out = Path(self.out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speech", type=Path, help="speech-output folder (default: the embedded default)")
    p.add_argument("--kmeans", type=Path, help="a k-means speech-output folder to compare in the same run")
    p.add_argument("--model", help="speech LLM directory (default: the embedded default)")
    p.add_argument("--questions", help="spoken-question manifest: answers voiced every way, WER, latency, RTF")
    p.add_argument("--num", type=int, default=100, help="spoken questions (and --manifest answers) to voice")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--latency-num", type=int, default=10, help="questions timed per path (0: none)")
    p.add_argument("--answers-only", action="store_true", help="generate and keep the answers, voice nothing")
    p.add_argument("--paths", nargs="+", choices=EVAL_PATHS, default=[],
                   help="voice only these (default: all the folders allow); figures add to summary.json")  # fmt: skip
    p.add_argument("--manifest", help="k-means only: units manifest of held-out TTS answers (resynthesis figures)")
    p.add_argument("--out", type=Path, default=Path("runs/speech/eval"))


def config_from_args(args: argparse.Namespace) -> SpeechEvalConfig:
    """The parsed command line as a config (the CLI parses; `run` takes the config)."""
    names = SpeechEvalConfig.__dataclass_fields__
    return SpeechEvalConfig(**{k: v for k, v in vars(args).items() if k in names})


def _decoder_output(directory: str | Path, model: Any) -> SpeechOutput:
    """A speech output with a decoder (phoneme or k-means units) from `directory`."""
    loaded = load_speech_output(directory, model.llm)
    if not isinstance(loaded, SpeechOutput):
        raise ValueError(f"{directory} speaks the answer's text; give a decoder's folder (its path here is text_tts)")
    return loaded


def run(cfg: SpeechEvalConfig) -> int:
    """Measure what `cfg` asks for; figures go to `cfg.out`/summary.json after each part."""
    from speechllm.defaults import DEFAULT_CHECKPOINT, load_model
    from speechllm.speech_out import compare

    for flag, path in (("--manifest", cfg.manifest), ("--questions", cfg.questions)):
        if path and not Path(path).is_file():  # before minutes of work, not after
            raise FileNotFoundError(f"{flag} {path} does not exist")
    torch.set_num_threads(1)
    model = load_model(cfg.model).eval()
    # The shipped default speaks the answer's text (path text_tts here); the decoders are measured from their folders.
    directory = cfg.speech or DEFAULT_CHECKPOINT / "speech_kmeans"
    loaded = _decoder_output(directory, model)
    speech: SpeechOutput | None = loaded
    kmeans = _decoder_output(cfg.kmeans, model) if cfg.kmeans else None
    if loaded.config.units == "kmeans":
        speech, kmeans = (kmeans, speech) if kmeans is None or kmeans.config.units == "phonemes" else (None, speech)
    (cfg.out / "wav").mkdir(parents=True, exist_ok=True)
    summary = cfg.out / "summary.json"
    figures: dict[str, Any] = json.loads(summary.read_text()) if summary.is_file() else {}  # runs add to it
    figures |= {"speech": str(directory), "kmeans": str(cfg.kmeans or "")}

    def save() -> None:  # after each part: a later failure keeps what was measured
        summary.write_text(json.dumps(figures, indent=2) + "\n")

    if cfg.manifest and kmeans is not None:
        figures["kmeans_manifest"] = intelligibility(kmeans, model, read_manifest(cfg.manifest)[: cfg.num], cfg.out)
        save()
    if cfg.questions:
        samples = read_manifest(cfg.questions)[: cfg.num]
        answers = compare.cached_answers(cfg.out / "answers.safetensors", model, samples, cfg.max_new_tokens)
        if cfg.answers_only:
            print(f"{len(answers)} answers in {cfg.out / 'answers.safetensors'}")
            return 0
        figures["first_token_s_median_all"] = float(np.median([a.first_token_s for a in answers]))
        if speech is not None and (not cfg.paths or "phonemes" in cfg.paths):
            figures["phoneme_error_rate"] = compare.phoneme_error_rate(speech, answers)
        save()
        names = cfg.paths or [p for p in compare.PATHS if p != "phonemes" or speech is not None]
        names = [n for n in names if n != "kmeans" or kmeans is not None or cfg.paths]
        figures |= compare.intelligibility(compare.voicings(speech, kmeans, names, model), answers, cfg.out)
        save()
        latency = samples[: cfg.latency_num]
        text = compare.text_output(compare.voice_of(speech), model)
        for name, out in {"kmeans": kmeans, "phonemes": speech, "text_tts": text}.items():
            if out is None or not cfg.latency_num:
                continue
            first, first_token = compare.first_audio(model, out, latency, cfg.max_new_tokens)
            figures[f"first_audio_s_median_{name}"] = float(np.nanmedian(first))
            figures[f"first_token_s_median_{name}"] = float(np.nanmedian(first_token))  # the same runs
            figures |= {f"{k}_{name}": v for k, v in compare.step_costs(out, answers).items()}
            save()
    print(json.dumps(figures, indent=2))
    return 0
