"""Whisper tiny.en WER of the default speech output (`units: text`) on answers already written.

    python benchmarks/text_speech_wer.py runs/speech/spoken_answers/per_answer.jsonl [--first-chunk-words 1]

Reads the answer texts (`text`) of a `speechllm speech eval` or `spoken_answer_speech.py` run, speaks
each with the default speech output exactly as a stream would (phrase by phrase; the voice's chunk
sizes can be changed to see what they cost), and prints the WER of
Whisper tiny.en's transcripts (beam 5) against the words the voice says for the texts
(`speech_out.judge`): all answers and the judgeable ones
(English, not a repetition loop; `benchmarks/speech_eval_table.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers", type=Path, help="a per_answer*.jsonl with the answers' texts (field `text`)")
    parser.add_argument("--first-chunk-words", type=int, help="words in the first phrase (default: shipped)")
    parser.add_argument("--chunk-words", type=int, help="most words in a later phrase (default: shipped)")
    args = parser.parse_args()
    import dataclasses

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from speech_eval_table import judgeable

    from speechllm.config import LLMConfig
    from speechllm.eval.whisper_asr import WhisperTranscriber
    from speechllm.speech_out.config import VoiceConfig
    from speechllm.speech_out.judge import spoken_wer
    from speechllm.speech_out.text_speech import TextSpeechOutput
    from speechllm.weights.llm import load_llm

    texts = [json.loads(line)["text"] for line in args.answers.read_text(encoding="utf-8").splitlines()]
    _, tokenizer = load_llm(LLMConfig())
    sizes = {"first_chunk_words": args.first_chunk_words, "chunk_words": args.chunk_words}
    voice = dataclasses.replace(VoiceConfig(), **{k: v for k, v in sizes.items() if v is not None})
    speech = TextSpeechOutput.load(voice, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    judge = WhisperTranscriber(beam_size=5)
    heard = []
    for text in texts:  # a stream of the answer's tokens, as the engine pushes them
        stream = speech.stream()
        pieces = [stream.push(None, t) for t in tokenizer.encode(text, add_special_tokens=False)]
        heard.append(judge(np.concatenate([*pieces, stream.finish()])))
    kept = [i for i, t in enumerate(texts) if judgeable(t)]
    print(f"voice {voice}")
    print(f"answers {len(texts)}: WER {spoken_wer(texts, heard):.3f}")
    print(f"judgeable {len(kept)}: WER {spoken_wer([texts[i] for i in kept], [heard[i] for i in kept]):.3f}")


if __name__ == "__main__":
    main()
