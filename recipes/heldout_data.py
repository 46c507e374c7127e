"""Held-out evaluation sets: audio that no training recipe of the project uses. Never train on them.

    apt-get install -y festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite   # TTS engines
    python recipes/heldout_data.py --out data_out/heldout                 # all sets; re-run to resume
    python recipes/heldout_data.py --out data_out/heldout --sets festival spoken_qa   # some of them

Sets, each a speechllm manifest `<out>/<set>/<set>.jsonl` with 16 kHz mono WAVs in `<out>/<set>/wav/`:

- `festival`: the 201 sentences of `recipes/heldout_text/sentences.txt` (written for this set: names,
  numbers, dates; none is in the shipped text) spoken by Festival, the engine held out of training,
  in turn by its voices kal (diphone), ked (diphone) and slt (HTS), at rates 0.9-1.1.
- `flite`: the same sentences by flite's voices kal16, awb, rms, slt. NOT a held-out engine if a
  training recipe uses flite; it is here to compare against.
- `spoken_qa`: the 130 questions of `recipes/heldout_text/questions.jsonl`, spoken by Festival.
- `festival_tel`, `spoken_qa_tel`: the same audio through a telephone channel
  (`speechllm.data.channel.telephone_channel`: 8 kHz, 300-3400 Hz, 8-bit mu-law).
- `human`: recordings of people from Debian and PyPI packages (`recipes/heldout_human.py`), one
  manifest per source in `<out>/human/` and all of them in `<out>/human/human.jsonl`.

Schema. ASR samples (`task: "asr"`) are what `speechllm transcribe` asks: user content
`[audio, "Transcribe the audio."]` (the engine's `ASR_INSTRUCTION`), `target` the words spoken.
Spoken questions are `task: "instruct"` (so `speechllm eval` scores them): the user turn is the audio
alone; `meta.question` is the question as text (the typed twin), `meta.answer` the list of accepted
answer strings (an answer is right when one occurs in it, normalised), `target` the first of them.
`voice` is "engine:voice"; `meta.rate` the speaking rate; telephone sets add `meta.channel` and
`meta.source_id`. Everything is deterministic; a sample whose WAV exists is not made again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speechllm.data.audio import load_audio, save_wav
from speechllm.data.builders import ASR_PROMPTS, read_sentences, shipped_text
from speechllm.data.channel import telephone_channel
from speechllm.data.manifest import Sample, read_manifest, write_manifest
from speechllm.eval.metrics import normalize

TEXT = Path(__file__).parent / "heldout_text"
ASR_INSTRUCTION = ASR_PROMPTS[0]  # == speechllm.inference.engine.ASR_INSTRUCTION (what `transcribe` asks)
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
SETS = ("festival", "flite", "spoken_qa", "festival_tel", "spoken_qa_tel", "human")
SEED = 20261129


@dataclass(frozen=True)
class Utterance:
    """One thing to say: its id, the words, and how the finished sample is made from the WAV path."""

    id: str
    text: str
    make: Callable[[str, str, float], Sample]  # (wav path, voice, rate) -> Sample


Job = tuple[str, float, Path]  # (text, rate, output WAV at the engine's own sample rate)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_say(voice: str, jobs: list[Job]) -> None:
    """Festival with `voice` (e.g. "kal_diphone") speaks every job in one process (startup is seconds).

    rate > 1 speaks faster (Festival's Duration_Stretch = 1 / rate).
    """
    if shutil.which("festival") is None:
        raise FileNotFoundError("festival not found: apt-get install festival festvox-kallpc16k ...")
    lines = [f"(voice_{voice})"]
    for text, rate, wav in jobs:
        lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / rate:.3f})")
        lines.append(
            f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(str(wav))} 'riff)"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".scm", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        subprocess.run(["festival", "-b", f.name], check=True, capture_output=True, timeout=60 + 30 * len(jobs))


def flite_say(voice: str, jobs: list[Job]) -> None:
    """flite with one of its built-in voices, one process per job (it starts in milliseconds)."""
    if shutil.which("flite") is None:
        raise FileNotFoundError("flite not found: apt-get install flite")
    for text, rate, wav in jobs:
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / rate:.3f}", "-t", text, "-o", str(wav)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


ENGINES = {"festival": (festival_say, FESTIVAL_VOICES), "flite": (flite_say, FLITE_VOICES)}


def asr_sample(sample_id: str, text: str) -> Callable[[str, str, float], Sample]:
    def make(wav: str, voice: str, rate: float) -> Sample:
        content = [{"type": "audio", "audio": 0}, {"type": "text", "text": ASR_INSTRUCTION}]
        return Sample(sample_id, "asr", [wav], [{"role": "user", "content": content}], text, voice=voice,
                      meta={"rate": rate})  # fmt: skip

    return make


def question_sample(sample_id: str, question: str, answers: list[str]) -> Callable[[str, str, float], Sample]:
    def make(wav: str, voice: str, rate: float) -> Sample:
        messages = [{"role": "user", "content": [{"type": "audio", "audio": 0}]}]
        meta = {"question": question, "answer": answers, "rate": rate}
        return Sample(sample_id, "instruct", [wav], messages, answers[0], voice=voice, meta=meta)

    return make


def synthesize_set(out: Path, name: str, engine: str, utterances: list[Utterance], chunk: int = 20) -> list[Sample]:
    """Speak every utterance (voices in turn, rate 0.9-1.1 drawn per utterance) and write the manifest.

    Missing WAVs are made in chunks of `chunk` per engine call, so an interrupted build loses little.
    """
    say, voices = ENGINES[engine]
    wav_dir = (out / name / "wav").resolve()
    wav_dir.mkdir(parents=True, exist_ok=True)
    plan = []
    for i, u in enumerate(utterances):
        rate = round(float(np.random.default_rng([SEED, i]).uniform(0.9, 1.1)), 3)
        plan.append((u, voices[i % len(voices)], rate, wav_dir / f"{u.id}.wav"))
    todo = [p for p in plan if not p[3].exists()]
    with tqdm(total=len(plan), initial=len(plan) - len(todo), desc=name, unit="utt") as bar:
        for voice in voices:
            mine = [p for p in todo if p[1] == voice]
            for start in range(0, len(mine), chunk):
                part = mine[start : start + chunk]
                say(voice, [(u.text, rate, wav.with_suffix(".raw.wav")) for u, _, rate, wav in part])
                for _, _, _, wav in part:
                    save_wav(wav, load_audio(wav.with_suffix(".raw.wav")))  # 16 kHz mono (slt HTS is 32 kHz)
                    wav.with_suffix(".raw.wav").unlink()
                bar.update(len(part))
    samples = [u.make(str(wav), f"{engine}:{voice}", rate) for u, voice, rate, wav in plan]
    write_manifest(out / name / f"{name}.jsonl", samples)
    return samples


def telephone_set(out: Path, source: str) -> list[Sample]:
    """`<source>_tel`: every sample of `source` with its audio through `telephone_channel`."""
    name = f"{source}_tel"
    wav_dir = (out / name / "wav").resolve()
    wav_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in tqdm(read_manifest(out / source / f"{source}.jsonl"), desc=name, unit="utt"):
        wav = wav_dir / f"{s.id}.wav"
        if not wav.exists():
            save_wav(wav, telephone_channel(load_audio(s.audio[0])))
        meta = {**s.meta, "channel": "telephone 8 kHz 300-3400 Hz mu-law 8 bit", "source_id": s.id}
        samples.append(Sample(f"tel-{s.id}", s.task, [str(wav)], s.messages, s.target, voice=s.voice, meta=meta))
    write_manifest(out / name / f"{name}.jsonl", samples)
    return samples


def read_heldout_questions() -> list[dict]:
    questions = [json.loads(line) for line in (TEXT / "questions.jsonl").read_text().splitlines() if line.strip()]
    for q in questions:
        if not (isinstance(q.get("answers"), list) and q["answers"] and all(normalize(a) for a in q["answers"])):
            raise ValueError(f"{q.get('id')}: answers must be a non-empty list of non-empty strings, got {q}")
    return questions


def check_unseen(texts: list[str]) -> None:
    """Refuse held-out text that the shipped training text contains (compared normalised)."""
    shipped = {normalize(s) for s in read_sentences(shipped_text("sentences.txt"))}
    for line in shipped_text("questions.jsonl").read_text().splitlines():
        if line.strip():
            shipped.add(normalize(json.loads(line)["question"]))
    clash = [t for t in texts if normalize(t) in shipped]
    if clash:
        raise ValueError(f"{len(clash)} held-out texts are in the shipped training text, e.g. {clash[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--downloads", type=Path, default=Path("data_out/heldout/downloads"),
                        help="where the human sources' packages are downloaded (for `human`)")  # fmt: skip
    args = parser.parse_args()
    sentences = read_sentences(TEXT / "sentences.txt")
    questions = read_heldout_questions()
    check_unseen(sentences + [q["question"] for q in questions])
    asr = [Utterance(f"s{i:03d}", t, asr_sample(f"s{i:03d}", t)) for i, t in enumerate(sentences)]
    qa = [Utterance(q["id"], q["question"], question_sample(q["id"], q["question"], q["answers"])) for q in questions]
    counts = {}
    for name in args.sets:
        if name in ("festival", "flite"):
            samples = synthesize_set(args.out, name, name, asr)
        elif name == "spoken_qa":
            samples = synthesize_set(args.out, name, "festival", qa)
        elif name.endswith("_tel"):
            samples = telephone_set(args.out, name.removesuffix("_tel"))
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from heldout_human import build_human

            samples = build_human(args.out / "human", args.downloads)
        counts[name] = len(samples)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
