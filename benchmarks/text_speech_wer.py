"""Whisper tiny.en WER of the default speech output (`units: text`) on answers already written.

    python benchmarks/text_speech_wer.py runs/speech/eval_phonemes/per_answer.text_tts.jsonl

Reads the answer texts (`text`) of a `speechllm speech eval` run, speaks each with the default
speech output exactly as a stream would (word by word, phrase chunks), and prints the WER of
Whisper tiny.en's transcripts (beam 5) against the texts: all answers and the judgeable ones
(English, not a repetition loop; `benchmarks/speech_eval_table.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers", type=Path, help="a per_answer.*.jsonl of `speechllm speech eval` (field `text`)")
    args = parser.parse_args()
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from speech_eval_table import judgeable

    from speechllm.config import LLMConfig
    from speechllm.eval.metrics import wer
    from speechllm.eval.whisper_asr import WhisperTranscriber
    from speechllm.speech_out.config import VoiceConfig
    from speechllm.speech_out.text_speech import TextSpeechOutput
    from speechllm.weights.llm import load_llm

    texts = [json.loads(line)["text"] for line in args.answers.read_text(encoding="utf-8").splitlines()]
    _, tokenizer = load_llm(LLMConfig())
    speech = TextSpeechOutput.load(VoiceConfig(), lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    judge = WhisperTranscriber(beam_size=5)
    heard = []
    for text in texts:  # a stream of the answer's tokens, as the engine pushes them
        stream = speech.stream()
        pieces = [stream.push(None, t) for t in tokenizer.encode(text, add_special_tokens=False)]
        heard.append(judge(np.concatenate([*pieces, stream.finish()])))
    kept = [i for i, t in enumerate(texts) if judgeable(t)]
    print(f"answers {len(texts)}: WER {wer(texts, heard):.3f}")
    print(f"judgeable {len(kept)}: WER {wer([texts[i] for i in kept], [heard[i] for i in kept]):.3f}")


if __name__ == "__main__":
    main()
