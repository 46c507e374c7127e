"""What a sample's audio says, as text: the transcript behind each spoken part of a conversation.

Training pairs each spoken sample with its text-only twin, and evaluation compares the answers to
both; the two build the twin here.
"""

from __future__ import annotations

from typing import Any

from speechllm.data.manifest import Sample


def spoken_text(sample: Sample) -> str:
    """What the sample's (first) audio says: the question of an instruction, else the ASR target."""
    for key in ("question", "text", "transcript"):
        if isinstance(sample.meta.get(key), str):
            return str(sample.meta[key])
    if sample.task == "asr":
        return sample.target
    raise ValueError(f"{sample.id}: no transcript of its audio (meta.question / meta.text) and task is {sample.task!r}")


def with_transcripts(sample: Sample) -> list[dict[str, Any]]:
    """The sample's messages with its audio replaced by the text it speaks (the text-only twin)."""
    text = spoken_text(sample)
    out = []
    for m in sample.messages:
        content = m["content"]
        if isinstance(content, list):
            content = "\n".join(text if p.get("type") == "audio" else p["text"] for p in content)
        out.append({"role": m["role"], "content": content})
    return out
