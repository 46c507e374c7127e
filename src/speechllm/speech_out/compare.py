"""Spoken answers to spoken questions, three ways, on the same answers in one run.

The model hears each held-out spoken question and answers greedily (the states that predicted
each answer token are kept). Each answer is then voiced by:
- `phonemes`: LLM states -> phoneme speech decoder -> Piper voice, phrase by phrase (ours);
- `text_tts`: the answer *text*, phrase by phrase, phonemized by eSpeak NG and rendered by the same
  voice (a text-to-speech cascade: the shipped default, `speechllm.speech_out.text_speech`);
- `kmeans`: LLM states -> k-means speech decoder -> our unit vocoder;
- `text_tts_whole`: the text rendered one sentence a chunk (Piper's own way): the voice's ceiling.
Whisper tiny.en transcribes each; WER is against the words the voice says for the answer text
(`speech_out.judge`: `1 + 1` is "1 plus 1"). Also per path: real-time factor
(speech seconds / audio seconds), seconds from the end of the question (waveform in memory) to the
first audio chunk next to the time to the first text token (each path in its own generation run,
so one path's work does not delay another's), and the mean push time per token at tokens 1-20
vs 191-210 of one long stream of real answer states.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from speechllm.config import SAMPLE_RATE
from speechllm.data.audio import load_audio, save_wav
from speechllm.speech_out.config import VoiceConfig
from speechllm.speech_out.judge import spoken_wer
from speechllm.speech_out.piper_voice import PiperVoice
from speechllm.speech_out.streaming import SpeechOutput
from speechllm.speech_out.text_speech import TextSpeechOutput


@dataclass
class SpokenAnswer:
    id: str
    text: str
    tokens: torch.Tensor
    """(N,) answer tokens before the end of the turn."""
    hidden: torch.Tensor
    """(N, D) the states that predicted them."""
    first_token_s: float


OnToken = Callable[[torch.Tensor, int], bool]
Voicing = Callable[[SpokenAnswer], np.ndarray]


def generate(model: Any, audio: np.ndarray, max_new_tokens: int, on_token: OnToken) -> float:
    """Answer one spoken question greedily; `on_token(hidden (D,), token)` returning True stops early.
    Returns seconds from the call (the question's waveform in memory) to the first token."""
    from speechllm.inference.generation import GenerationConfig, eos_token_ids, stream_generate

    eos = eos_token_ids(model)
    t0 = time.perf_counter()
    batch = model.prepare([[{"role": "user", "content": [{"type": "audio", "audio": audio}]}]])
    states: list[torch.Tensor] = []
    first = float("nan")
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    for step, token in enumerate(stream_generate(model, batch, gen, states.append)):
        if step == 0:
            first = time.perf_counter() - t0
        if int(token[0]) in eos or on_token(states[-1][0], int(token[0])):
            break
    return first


class _Collect:
    """An `on_token` that keeps every state and token."""

    def __init__(self) -> None:
        self.hidden: list[torch.Tensor] = []
        self.tokens: list[int] = []

    def __call__(self, h: torch.Tensor, token: int) -> bool:
        self.hidden.append(h.float().cpu())
        self.tokens.append(token)
        return False


def spoken_answers(model: Any, samples: list[Any], max_new_tokens: int) -> list[SpokenAnswer]:
    out = []
    for s in tqdm(samples, desc="answers"):
        got = _Collect()
        first = generate(model, load_audio(s.audio[0]), max_new_tokens, got)
        text = model.processor.tokenizer.decode(got.tokens, skip_special_tokens=True).strip()
        if got.tokens and text:
            out.append(SpokenAnswer(s.id, text, torch.tensor(got.tokens), torch.stack(got.hidden), first))
    return out


def cached_answers(path: Path, model: Any, samples: list[Any], max_new_tokens: int) -> list[SpokenAnswer]:
    """`spoken_answers`, kept in `path` (safetensors: states and tokens; metadata: ids, texts, first-token
    times) so that a rerun voices the same answers without generating them again."""
    from safetensors.torch import load_file, save_file

    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta, tensors = json.loads(meta_path.read_text()), load_file(str(path))
        asked = [s.id for s in samples]
        if meta["questions"][: len(asked)] == asked and meta["max_new_tokens"] == max_new_tokens:  # a prefix will do
            return [
                SpokenAnswer(a["id"], a["text"], tensors[f"{a['id']}.tokens"], tensors[f"{a['id']}.hidden"], a["first"])
                for a in meta["answers"]
                if a["id"] in set(asked)
            ]
    answers = spoken_answers(model, samples, max_new_tokens)
    tensors = {f"{a.id}.{k}": v.contiguous() for a in answers for k, v in (("tokens", a.tokens), ("hidden", a.hidden))}
    save_file(tensors, str(path))
    rows = [{"id": a.id, "text": a.text, "first": a.first_token_s} for a in answers]
    meta = {"questions": [s.id for s in samples], "max_new_tokens": max_new_tokens, "answers": rows}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return answers


PATHS = ("phonemes", "text_tts", "text_tts_whole", "kmeans")


def voice_of(speech: SpeechOutput | None) -> PiperVoice:
    """The phoneme folder's voice (the text paths speak with its settings), or the default voice."""
    voice = speech.vocoder if speech is not None else PiperVoice(VoiceConfig())
    if not isinstance(voice, PiperVoice):
        raise ValueError(f"expected a phoneme speech output (a Piper voice), got one with {type(voice).__name__}")
    return voice


def text_output(voice: PiperVoice, model: Any) -> TextSpeechOutput:
    """The shipped default speech output (the answer's text spoken by `voice`), reading `model`'s tokens."""
    tokenizer = model.processor.tokenizer
    return TextSpeechOutput(voice, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))


def voicings(
    speech: SpeechOutput | None, kmeans: SpeechOutput | None, names: list[str], model: Any
) -> dict[str, Voicing]:
    """Path name -> answer -> 16 kHz audio, for the `names` that the given folders allow. The text
    paths use the phoneme folder's voice settings (or the defaults when there is none)."""
    voice = voice_of(speech)
    whole = PiperVoice(dataclasses.replace(voice.config, first_chunk_words=10_000, chunk_words=10_000))
    text = text_output(voice, model)
    paths: dict[str, Voicing] = {
        "text_tts": lambda a: text.synthesize_text(a.text),
        "text_tts_whole": lambda a: whole.synthesize(whole.inventory.encode(a.text)),
    }
    if speech is not None:
        paths["phonemes"] = lambda a: speech.synthesize(a.hidden, a.tokens)
    if kmeans is not None:
        paths["kmeans"] = lambda a: kmeans.synthesize(a.hidden, a.tokens)
    missing = [n for n in names if n not in paths]
    if missing:
        raise ValueError(f"paths {missing} need a {'phoneme' if 'phonemes' in missing else 'k-means'} speech folder")
    return {n: paths[n] for n in names}


def intelligibility(paths: dict[str, Voicing], answers: list[SpokenAnswer], out: Path) -> dict[str, Any]:
    from speechllm.eval.whisper_asr import WhisperTranscriber

    judge = WhisperTranscriber()
    figures: dict[str, Any] = {"answers": len(answers)}
    for name, voice in paths.items():
        rows: list[dict[str, Any]] = [{"id": a.id, "text": a.text} for a in answers]
        seconds = audio_seconds = 0.0
        for a, row in tqdm(list(zip(answers, rows, strict=True)), desc=name):
            t = time.perf_counter()
            audio = voice(a)
            seconds += time.perf_counter() - t
            audio_seconds += len(audio) / SAMPLE_RATE
            if len(rows) - rows.index(row) <= 5:  # a few to listen to
                save_wav(out / "wav" / f"{a.id}.{name}.wav", audio, SAMPLE_RATE)
            row[name] = judge(audio) if len(audio) else ""
        figures[f"wer_{name}"] = spoken_wer([r["text"] for r in rows], [r[name] for r in rows])
        figures[f"rtf_{name}"] = seconds / max(audio_seconds, 1e-9)
        figures[f"audio_s_{name}"] = audio_seconds
        with open(out / f"per_answer.{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return figures


class _FirstAudio:
    """An `on_token` that stops at the first audio of a speech stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.t0 = time.perf_counter()
        self.seconds = float("nan")

    def __call__(self, h: torch.Tensor, token: int) -> bool:
        if not len(self.stream.push(h, token)):
            return False
        self.seconds = time.perf_counter() - self.t0
        return True


def first_audio(
    model: Any, output: SpeechOutput | TextSpeechOutput, samples: list[Any], max_new_tokens: int
) -> tuple[list[float], list[float]]:
    """Seconds to the first audio chunk of `output`'s stream per question, and, from the same runs,
    seconds to the first text token."""
    latencies, first_tokens = [], []
    for s in samples:
        audio = load_audio(s.audio[0])
        probe = _FirstAudio(output.stream())
        first_tokens.append(generate(model, audio, max_new_tokens, probe))
        latencies.append(probe.seconds)
    return latencies, first_tokens


def step_costs(
    speech: SpeechOutput | TextSpeechOutput, answers: list[SpokenAnswer], tokens: int = 210
) -> dict[str, float]:
    """Mean push time (ms) at tokens 1-20 and 191-210 of one stream of real answer states, joined."""
    hidden = torch.cat([a.hidden for a in answers])[:tokens]
    ids = torch.cat([a.tokens for a in answers])[:tokens]
    if len(ids) < tokens:
        raise ValueError(f"step costs need {tokens} answer tokens, the answers hold {len(ids)}")
    stream = speech.stream()
    times = []
    for i in range(tokens):
        t = time.perf_counter()
        stream.push(hidden[i], int(ids[i]))
        times.append(time.perf_counter() - t)
    stream.finish()
    return {
        "push_ms_tokens_1_20": 1e3 * float(np.mean(times[:20])),
        "push_ms_tokens_191_210": 1e3 * float(np.mean(times[190:])),
    }


def phoneme_error_rate(speech: SpeechOutput, answers: list[SpokenAnswer]) -> float:
    """Greedy CTC phonemes of the decoder vs the answer text's phonemes, edit distance over the latter."""
    from speechllm.eval.metrics import wer

    voice = speech.vocoder
    assert isinstance(voice, PiperVoice)
    refs = [" ".join(map(str, voice.inventory.encode(a.text))) for a in answers]
    hyps = [" ".join(map(str, speech.units(a.hidden, a.tokens))) or "-" for a in answers]
    return wer(refs, hyps, normalize=False)
