"""Training stages as data: which parts train, and the loss each stage optimizes.

- `ctc_embed` (trains compressor, adaptor): CTC between the adaptor's output and the transcript's
  token ids, scored against the LLM's own frozen embedding matrix plus a learned blank. No LLM
  forward at all: a cheap warm start.
- `ctc_head` (compressor, i.e. its CTC head): CTC of the CTC compressor's head on encoder frames;
  labels are LLM token ids, blank is the extra last label.
- `asr` (compressor, adaptor): cross-entropy of the transcript through the frozen LLM (adaptor
  pre-training, LLaSM stage 1).
- `instruct` (compressor, adaptor, LoRA): cross-entropy of the answer to spoken and mixed
  instructions (LLaSM stage 2).
- `distill` (compressor, adaptor): KL(LLM on the transcript text || LLM on the speech) over the
  answer tokens with the LLM frozen: speech is pushed to mean what its text means, and text
  abilities cannot erode.

`StageModel.forward(batch)` runs the whole loss, so data-parallel wrappers see every trainable
computation. The CTC vocabulary is the LLM's own tokens: the targets are exactly what the LLM
must later read, and the embedding matrix gives the warm start its output layer for free.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.model.compressor import CTCCompressor
from speechllm.model.ctc import collapse
from speechllm.model.speech_llm import IGNORE_INDEX, SpeechLLM

STAGES: dict[str, list[str]] = {
    "ctc_embed": ["compressor", "adaptor"],
    "ctc_head": ["compressor"],
    "asr": ["compressor", "adaptor"],
    "instruct": ["compressor", "adaptor", "lora"],
    "distill": ["compressor", "adaptor"],
}


def pad_frames(frames: list[Tensor]) -> tuple[Tensor, Tensor]:
    """A list of (T_i, D) into (N, T, D) plus lengths (N,)."""
    lengths = torch.tensor([f.shape[0] for f in frames], device=frames[0].device)
    return nn.utils.rnn.pad_sequence(frames, batch_first=True), lengths


def ctc_greedy(log_probs: Tensor, lengths: Tensor, blank: int) -> list[list[int]]:
    """Best path per row of (N, T, C): collapse repeats, drop blanks (`speechllm.model.ctc.collapse`)."""
    best = log_probs.argmax(-1)
    return [collapse(row[:n], blank) for row, n in zip(best.tolist(), lengths.tolist())]


class StageModel(nn.Module):
    """A SpeechLLM plus what one stage needs to compute its loss."""

    def __init__(self, model: SpeechLLM, stage: str, *, ce_weight: float = 0.0) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        if stage == "ctc_head" and not isinstance(model.compressor, CTCCompressor):
            raise ValueError(f"stage ctc_head needs compressor.kind 'ctc', got {model.config.compressor.kind!r}")
        if stage == "instruct" and not model.config.lora.enabled:
            raise ValueError("stage instruct trains LoRA: set model.lora.enabled: true")
        self.model = model
        self.stage = stage
        self.ce_weight = ce_weight
        parts = [p for p in STAGES[stage] if p != "lora" or model.config.lora.enabled]
        model.set_trainable(parts)
        if stage == "ctc_embed" and model.adaptor.blank is None:
            # An adaptor without selection has no blank row: this stage keeps its own, not saved.
            dim = int(model.embedding_table().shape[1])
            self.blank = nn.Parameter(torch.zeros(dim))
            self.blank_bias = nn.Parameter(torch.zeros(()))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        tok = self.model.processor.tokenizer
        return [list(tok(t, add_special_tokens=False).input_ids) for t in texts]

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.stage == "ctc_embed":
            return self._ctc_embed(batch)
        if self.stage == "ctc_head":
            return self._ctc_head(batch)
        if self.stage == "distill":
            return self._distill(batch)
        prepared = self.model.prepare(batch["conversations"], batch["answers"], left_pad=False, frames=batch["frames"])
        return {"loss": self.model(prepared)}

    # ------------------------------------------------------------------ CTC warm start

    def embed_logits(self, frames: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Log-probabilities (N, S, V+1) of each adaptor output over LLM tokens + blank (last)."""
        x, lengths = pad_frames(frames)
        c = self.model.compressor(x, lengths)
        embeds = self.model.adaptor(c.x)  # N, S, D_llm: every position, before any selection
        table = self.model.embedding_table()  # V, D_llm (frozen)
        if self.model.adaptor.blank is not None:
            logits = self.model.adaptor.ctc_logits(embeds, table)
        else:
            logits = torch.cat([embeds @ table.T, (embeds @ self.blank + self.blank_bias)[..., None]], dim=-1)
        return logits.float().log_softmax(-1), c.lengths

    def _ctc(self, log_probs: Tensor, lengths: Tensor, texts: list[str], blank: int) -> dict[str, Tensor]:
        targets = self.token_ids(texts)
        flat = torch.tensor([t for ids in targets for t in ids], device=log_probs.device)
        target_lengths = torch.tensor([len(ids) for ids in targets], device=log_probs.device)
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),  # N, T, C -> T, N, C
            flat,
            lengths,
            target_lengths,
            blank=blank,
            reduction="mean",
            zero_infinity=True,  # an utterance too short for its text contributes nothing rather than inf
        )
        return {"loss": loss}

    def _ctc_embed(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        log_probs, lengths = self.embed_logits(batch["frames"])
        return self._ctc(log_probs, lengths, batch["transcripts"], blank=log_probs.shape[-1] - 1)

    def head_logits(self, frames: list[Tensor]) -> tuple[Tensor, Tensor]:
        x, lengths = pad_frames(frames)
        compressed = self.model.compressor(x, lengths)
        assert compressed.ctc_logits is not None
        return compressed.ctc_logits.float().log_softmax(-1), lengths

    def _ctc_head(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        log_probs, lengths = self.head_logits(batch["frames"])
        return self._ctc(log_probs, lengths, batch["transcripts"], blank=self.head_blank())

    def head_blank(self) -> int:
        compressor = self.model.compressor
        assert isinstance(compressor, CTCCompressor)
        return compressor.blank_id

    # ------------------------------------------------------------------ distillation

    def _answer_logits(self, prepared: Any) -> tuple[Tensor, Tensor]:
        """Logits (B, L, V) predicting each next token, and the mask (B, L) of answer-token targets."""
        out = self.model.llm(
            inputs_embeds=prepared.inputs_embeds,
            attention_mask=self.model.attention_mask_for(prepared.attention_mask, prepared.prefix_lengths),
        )
        targets = prepared.labels[:, 1:]
        return out.logits[:, :-1], targets != IGNORE_INDEX

    def _distill(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad(), self.model.lora_disabled():
            text = self.model.prepare(batch["text_conversations"], batch["answers"], left_pad=False)
            teacher, t_mask = self._answer_logits(text)
            teacher_logp = teacher[t_mask].float().log_softmax(-1)  # tokens, V
        speech = self.model.prepare(batch["conversations"], batch["answers"], left_pad=False, frames=batch["frames"])
        student, s_mask = self._answer_logits(speech)
        student_logp = student[s_mask].float().log_softmax(-1)
        if student_logp.shape != teacher_logp.shape:
            raise RuntimeError(f"answer tokens differ: {tuple(student_logp.shape)} vs {tuple(teacher_logp.shape)}")
        kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")
        result = {"kl": kl.detach(), "loss": kl}
        if self.ce_weight:
            assert speech.labels is not None
            ce = F.nll_loss(student_logp, speech.labels[:, 1:][s_mask])
            result["ce"] = ce.detach()
            result["loss"] = kl + self.ce_weight * ce
        return result
