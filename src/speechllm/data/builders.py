"""Dataset builders: text in, synthetic speech + manifest out.

- `build_asr`: sentences spoken by random voices at random rates with random augmentation.
- `build_instruct`: questions spoken, answers as text; some samples add a typed instruction to
  the spoken question (mixed speech + text). Answers come from the data, an id/question mapping,
  or a callable (the frozen text LLM, passed in by the caller).
- `split_by_voice`: a held-out test set of voices that training never heard.

Every choice for utterance i is drawn from `np.random.default_rng([seed, i])`, so a job gives the
same dataset however it is interrupted and resumed. Builds resume: samples already in the output
manifest whose WAV exists are not redone. Synthesis runs in a process pool.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from speechllm.atomic import atomic_write_text
from speechllm.data import tts
from speechllm.data.audio import SAMPLE_RATE, save_wav
from speechllm.data.augment import AugmentConfig, apply_augmentation, draw_augmentation
from speechllm.data.manifest import ManifestAppender, Sample, iter_manifest, write_manifest

log = logging.getLogger(__name__)

ASR_PROMPTS = (
    "Transcribe the audio.",
    "Write down exactly what is said.",
    "What does the speaker say? Give the exact words.",
    "Transcribe this recording.",
)
SPOKEN_QA_PROMPTS = (  # typed instructions over a spoken question; the target is the answer
    "Answer the question in the recording in one sentence.",
    "Listen to the question and answer it briefly.",
    "Please answer what you hear.",
)
REPEAT_QA_PROMPT = "Repeat the spoken question word for word, then answer it."


# --- text sources -------------------------------------------------------------------------------


@dataclass
class Question:
    """One instruction record: what is asked, and the answer if the data has it."""

    id: str
    question: str
    answer: str | None = None


def shipped_text(name: str) -> Path:
    """Path of a text source shipped in speechllm/assets/text ("sentences.txt", "questions.jsonl")."""
    path = Path(str(resources.files("speechllm") / "assets" / "text" / name))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped text source {name!r} at {path}")
    return path


def read_sentences(path: str | Path) -> list[str]:
    """One sentence a line; blank lines are ignored."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise ValueError(f"{path}: no sentences (the file is empty or blank)")
    return sentences


def read_questions(path: str | Path) -> list[Question]:
    """JSONL with "question" (or "instruction") and optional "answer" (or "output") and "id"."""
    questions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text = rec.get("question", rec.get("instruction"))
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("needs a non-empty 'question' (or 'instruction') string")
                answer = rec.get("answer", rec.get("output"))
                qid = str(rec.get("id", f"line{lineno}"))
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{lineno}: {e}") from e
            questions.append(Question(qid, text.strip(), answer))
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def read_answers(path: str | Path) -> dict[str, str]:
    """JSONL answer mapping: {"id": ..., "answer": ...} or {"question": ..., "answer": ...} a line."""
    answers = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            rec = json.loads(line)
            key = rec.get("id", rec.get("question"))
            if key is None or not isinstance(rec.get("answer"), str):
                raise ValueError(f"{path}:{lineno}: needs 'answer' and one of 'id' or 'question'")
            answers[str(key)] = rec["answer"]
    return answers


def select_voices(patterns: Sequence[str], engines: Sequence[str] = ("espeak",)) -> list[str]:
    """Voices ("engine:voice") of `engines` matching any of the shell-style `patterns`."""
    available = tts.list_voices(tuple(engines))
    chosen = [v for v in available if any(fnmatch.fnmatchcase(v, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"no voice matches {list(patterns)}; available: {available[:8]} ...")
    return chosen


# --- synthesis jobs -----------------------------------------------------------------------------


@dataclass
class SynthesisOptions:
    """How utterances are voiced. Saved beside the manifest; a resumed build must use the same."""

    voices: list[str]
    """Voices "engine:voice" to draw from uniformly."""
    rate_range: tuple[float, float] = (0.85, 1.25)
    """Relative speaking rate, drawn uniformly."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.voices:
            raise ValueError("voices must name at least one 'engine:voice'")
        for v in self.voices:
            tts.parse_voice(v)
        lo, hi = self.rate_range
        if not 0.3 <= lo <= hi <= 3.0:
            raise ValueError(f"rate_range must satisfy 0.3 <= low <= high <= 3, got {self.rate_range}")

    def draw(self, index: int) -> tuple[str, float, dict[str, Any], int]:
        """Voice, rate, augmentation and noise seed of utterance `index`; the same on every run."""
        rng = np.random.default_rng([self.seed, index])
        voice = self.voices[int(rng.integers(len(self.voices)))]
        rate = round(float(rng.uniform(*self.rate_range)), 3)
        return voice, rate, draw_augmentation(self.augment, rng), int(rng.integers(2**31))


@dataclass(frozen=True)
class _Job:
    """One utterance for a pool worker; plain data so it pickles cheaply."""

    id: str
    text: str
    voice: str
    rate: float
    augment: dict[str, Any]
    noise_seed: int
    wav: str


def _synthesize_job(job: _Job) -> tuple[str, float]:
    audio = tts.synthesize(job.voice, job.text, job.rate)
    audio = apply_augmentation(audio, job.augment, np.random.default_rng(job.noise_seed))
    save_wav(job.wav, audio)
    return job.id, round(len(audio) / SAMPLE_RATE, 3)


def _completed(manifest: Path) -> dict[str, Sample]:
    """Samples of an earlier run whose audio all exists (the last line for an id wins)."""
    if not manifest.exists():
        return {}
    ManifestAppender(manifest).close()  # drops a half-written last line left by a kill
    done = {s.id: s for s in iter_manifest(manifest)}
    return {i: s for i, s in done.items() if all(Path(a).is_file() for a in s.audio)}


def _check_build_params(path: Path, params: dict[str, Any]) -> None:
    """Refuse to resume a build that was started with other parameters (it would mix datasets)."""
    if path.exists():
        old = json.loads(path.read_text())
        if old != params:
            changed = sorted(k for k in params.keys() | old.keys() if old.get(k) != params.get(k))
            raise ValueError(f"{path} records a build with other parameters ({changed}); use another output folder")
    else:
        atomic_write_text(path, json.dumps(params, indent=1))


def run_synthesis(
    jobs: Sequence[tuple[_Job | None, Sample]], manifest: Path, *, workers: int, desc: str, progress: bool = True
) -> list[Sample]:
    """Synthesise the jobs not yet done, appending each finished sample to `manifest`.

    A job of None marks a sample the caller already found built. At the end the manifest is
    rewritten atomically in job order. Returns the samples in that order.
    """
    done = _completed(manifest)
    todo = [(job, s) for job, s in jobs if s.id not in done]
    missing = [s.id for job, s in todo if job is None]
    if missing:
        raise ValueError(f"{manifest}: samples {missing[:3]} were marked built but are not")
    pending = {s.id: s for _, s in todo}
    n_done = len(jobs) - len(todo)
    log.info("%s: %d of %d samples already built, %d to go", manifest, n_done, len(jobs), len(todo))
    bar = tqdm(total=len(jobs), initial=n_done, desc=desc, unit="utt", disable=not progress)
    with ManifestAppender(manifest) as out, bar:
        for sample_id, seconds in _map(_synthesize_job, [job for job, _ in todo if job], workers):
            sample = pending[sample_id]
            sample.meta["seconds"] = seconds
            out.append(sample)
            done[sample_id] = sample
            bar.update()
    listed = {s.id for _, s in jobs}
    ordered = [done[s.id] for _, s in jobs]
    extra = [s for i, s in done.items() if i not in listed]
    if extra:
        log.warning("%s: keeping %d samples from an earlier run that this job does not list", manifest, len(extra))
    write_manifest(manifest, ordered + extra)
    return ordered + extra


def _map(fn: Callable[[_Job], tuple[str, float]], jobs: list[_Job], workers: int) -> Iterator[tuple[str, float]]:
    if workers <= 1 or len(jobs) < 2:
        yield from map(fn, jobs)
        return
    # spawn, not fork: a forked child would inherit the parent's eSpeak state (a C library global).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(fn, jobs, chunksize=8)


# --- builders -----------------------------------------------------------------------------------


def build_asr(
    sentences: Sequence[str],
    out_dir: str | Path,
    options: SynthesisOptions,
    *,
    id_prefix: str = "asr",
    workers: int = 2,
    progress: bool = True,
) -> list[Sample]:
    """Speak each sentence once; writes out_dir/wav/*.wav and out_dir/asr.jsonl. Resumes."""
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    params = {"task": "asr", "n": len(sentences), "id_prefix": id_prefix, **_jsonable(options)}
    _check_build_params(out / "asr.build.json", params)
    jobs = []
    for i, text in enumerate(sentences):
        voice, rate, augment, noise_seed = options.draw(i)
        sid = f"{id_prefix}-{i:06d}"
        wav = str((out / "wav" / f"{sid}.wav").resolve())
        prompt = ASR_PROMPTS[int(np.random.default_rng([options.seed, i, 1]).integers(len(ASR_PROMPTS)))]
        sample = Sample(
            id=sid,
            task="asr",
            audio=[wav],
            messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "text", "text": prompt}]}],
            target=text,
            voice=voice,
            meta={"rate": rate, "augment": augment},
        )
        jobs.append((_Job(sid, text, voice, rate, augment, noise_seed, wav), sample))
    return run_synthesis(jobs, out / "asr.jsonl", workers=workers, desc="asr", progress=progress)


def build_instruct(
    questions: Sequence[Question],
    out_dir: str | Path,
    options: SynthesisOptions,
    *,
    answers: Mapping[str, str] | None = None,
    answer_fn: Callable[[str], str] | None = None,
    mixed_fraction: float = 0.3,
    system_prompt: str | None = None,
    id_prefix: str = "instruct",
    workers: int = 2,
    progress: bool = True,
) -> list[Sample]:
    """Spoken questions with text answers; writes out_dir/wav/*.wav and out_dir/instruct.jsonl. Resumes.

    The answer of a question is, in order: its own `answer`, `answers[id]`, `answers[question]`,
    then `answer_fn(question)` (e.g. the frozen text LLM, so the speech model learns to reply as
    it would to the typed question). A question with none of these raises ValueError.
    A `mixed_fraction` of samples pair the spoken question with a typed instruction.
    """
    if not 0.0 <= mixed_fraction <= 1.0:
        raise ValueError(f"mixed_fraction must be in [0, 1], got {mixed_fraction}")
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    params = {
        "task": "instruct", "n": len(questions), "id_prefix": id_prefix, "mixed_fraction": mixed_fraction,
        "system_prompt": system_prompt, **_jsonable(options),
    }  # fmt: skip
    _check_build_params(out / "instruct.build.json", params)
    manifest = out / "instruct.jsonl"
    done = _completed(manifest)
    jobs: list[tuple[_Job | None, Sample]] = []
    for i, q in enumerate(questions):
        sid = f"{id_prefix}-{i:06d}"
        if sid in done:  # its answer is in the manifest already: don't ask answer_fn again
            jobs.append((None, done[sid]))
            continue
        answer = _find_answer(q, answers, answer_fn)
        voice, rate, augment, noise_seed = options.draw(i)
        wav = str((out / "wav" / f"{sid}.wav").resolve())
        content, target, mode = _instruct_turn(q.question, answer, mixed_fraction, options.seed, i)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": content}
        ]
        sample = Sample(
            id=sid, task="instruct", audio=[wav], messages=messages, target=target, voice=voice,
            meta={"rate": rate, "augment": augment, "mode": mode, "question": q.question, "source_id": q.id},
        )  # fmt: skip
        jobs.append((_Job(sid, q.question, voice, rate, augment, noise_seed, wav), sample))
    return run_synthesis(jobs, manifest, workers=workers, desc="instruct", progress=progress)


def _find_answer(q: Question, answers: Mapping[str, str] | None, answer_fn: Callable[[str], str] | None) -> str:
    if q.answer is not None:
        return q.answer
    if answers is not None:
        for key in (q.id, q.question):
            if key in answers:
                return answers[key]
    if answer_fn is not None:
        answer = answer_fn(q.question)
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"answer_fn returned {answer!r} for question {q.id!r}; expected a non-empty string")
        return answer.strip()
    raise ValueError(f"question {q.id!r} ({q.question[:60]!r}) has no answer in the data or answers, and no answer_fn")


def _instruct_turn(question: str, answer: str, mixed_fraction: float, seed: int, i: int) -> tuple[list, str, str]:
    """User content, target and mode ("spoken", "mixed" or "repeat") of instruction sample i."""
    rng = np.random.default_rng([seed, i, 2])
    audio_part = {"type": "audio", "audio": 0}
    if rng.random() >= mixed_fraction:
        return [audio_part], answer, "spoken"
    if rng.random() < 0.25:
        return [{"type": "text", "text": REPEAT_QA_PROMPT}, audio_part], f"{question} {answer}", "repeat"
    prompt = SPOKEN_QA_PROMPTS[int(rng.integers(len(SPOKEN_QA_PROMPTS)))]
    return [{"type": "text", "text": prompt}, audio_part], answer, "mixed"


def _jsonable(options: SynthesisOptions) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(options)))


# --- splits -------------------------------------------------------------------------------------


def split_by_voice(samples: Sequence[Sample], heldout_voices: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
    """(train, test): test holds every sample whose voice matches a held-out pattern.

    Patterns are shell-style (`"espeak:en-029*"` holds out the Caribbean accent with all its
    variants). Samples without a voice, or a pattern that matches nothing, raise ValueError:
    either would make the split quietly wrong.
    """
    if not heldout_voices:
        raise ValueError("heldout_voices is empty; name at least one voice or pattern")
    unvoiced = [s.id for s in samples if s.voice is None]
    if unvoiced:
        raise ValueError(f"{len(unvoiced)} samples have no voice (e.g. {unvoiced[:3]}); cannot split by voice")
    train: list[Sample] = []
    test: list[Sample] = []
    matched: set[str] = set()
    for s in samples:
        hits = [p for p in heldout_voices if fnmatch.fnmatchcase(s.voice or "", p)]
        matched.update(hits)
        (test if hits else train).append(s)
    unmatched = [p for p in heldout_voices if p not in matched]
    if unmatched:
        raise ValueError(f"held-out voice patterns {unmatched} match no sample")
    return train, test
