"""The speech LLM: speech encoder -> compressor -> adaptor -> decoder-only LLM.

The parts are built elsewhere (`speechllm.model.builders`) and passed in. Which parts train is
data: `config.trainable` names them, `part_of` says which part owns each parameter, and
`save_pretrained` writes the weights of the parts we own (compressor, adaptor, LoRA, layer
weights) plus any part that was set to train; the frozen parts reload from their sources.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from speechllm.config import PARTS, SpeechLLMConfig
from speechllm.model.adaptor import Adaptor
from speechllm.model.bridge import ctc_bridge, tidy_transcript, token_embeddings
from speechllm.model.compressor import Compressor
from speechllm.model.encoder import WhisperEncoder
from speechllm.model.merge import Hearing, transcribe_merged
from speechllm.model.processor import Message, Rendered, SpeechLLMProcessor
from speechllm.model.rescore import HeardTurn, TurnScorer, best_by_llm, candidates
from speechllm.model.transcriber import Transcriber, transcribe_windows

SILENT_TEXT = "..."
"""What the LLM reads for an audio whose transcript is empty (never an empty turn)."""

IGNORE_INDEX = -100


def part_of(name: str) -> str:
    """The part (one of config.PARTS) that owns parameter `name` of a SpeechLLM."""
    if name == "encoder.layer_weights":
        return "layer_weights"
    head = name.split(".", 1)[0]
    if head == "llm":
        return "lora" if "lora_" in name else "llm"
    if head in ("encoder", "compressor", "adaptor", "recognizer"):
        return head
    raise ValueError(f"parameter {name!r} belongs to no known part {PARTS}")


# Parts whose weights exist nowhere but in our checkpoints: always saved.
OWNED_PARTS = ("layer_weights", "compressor", "adaptor", "lora")


@dataclass
class Batch:
    """Model inputs for a batch of conversations (padded to L positions)."""

    input_ids: Tensor  # B, L (speech positions hold the placeholder id)
    attention_mask: Tensor  # B, L (1 = real token)
    inputs_embeds: Tensor  # B, L, D_llm
    prefix_lengths: Tensor  # B: positions before the answer, counted from the first real token
    labels: Tensor | None = None  # B, L (IGNORE_INDEX outside the answer)


class SpeechLLM(nn.Module):
    def __init__(
        self,
        config: SpeechLLMConfig,
        encoder: WhisperEncoder,
        compressor: Compressor,
        adaptor: Adaptor,
        llm: PreTrainedModel,
        processor: SpeechLLMProcessor,
        recognizer: Transcriber | None = None,
    ) -> None:
        super().__init__()
        if config.bridge.reads_whisper and recognizer is None:
            raise ValueError("bridge.recognizer is 'whisper' but no Whisper text decoder was passed in")
        if adaptor.input_dim != compressor.output_dim(encoder.dim):
            raise ValueError(
                f"adaptor input width {adaptor.input_dim} != "
                f"compressor output width {compressor.output_dim(encoder.dim)}"
            )
        self.config = config
        self.encoder = encoder
        self.compressor = compressor
        self.adaptor = adaptor
        self.llm = llm
        self.processor = processor
        self.recognizer = recognizer
        self._turn_scorer: TurnScorer | None = None  # the LLM's scorer of transcripts (`bridge.rescore`)
        self._heard_turn: HeardTurn | None = None  # see take_heard_turn
        self.second: Hearing | None = None  # `bridge.merge_with`'s recognizer (not a submodule: never saved)
        self.set_trainable(config.trainable)

    # ------------------------------------------------------------------ parts and freezing

    def set_trainable(self, parts: list[str]) -> None:
        """Exactly the parameters of `parts` require grad; everything else is frozen."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)}; expected some of {list(PARTS)}")
        for name, p in self.named_parameters():
            p.requires_grad_(part_of(name) in parts)
        self.config.trainable = list(parts)
        self._turn_scorer = None  # its cached template start is stale once the LLM may train
        self._heard_turn = None

    def trainable_parameter_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def saved_parameter_names(self) -> set[str]:
        """What a checkpoint of this model holds: the parts only we have and the trained ones, except the
        parts its config never runs (`unused_parts`)."""
        keep = (set(OWNED_PARTS) | set(self.config.trainable)) - self.unused_parts()
        return {n for n, _ in self.named_parameters() if part_of(n) in keep}

    @contextlib.contextmanager
    def lora_disabled(self) -> Iterator[None]:
        """Run the plain LLM: LoRA adapters (if any) are bypassed inside this block."""
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.llm.modules() if isinstance(m, LoraLayer)]
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    @property
    def device(self) -> torch.device:
        return next(self.adaptor.parameters()).device

    @property
    def adaptor_dtype(self) -> torch.dtype:
        return next(self.adaptor.parameters()).dtype

    # ------------------------------------------------------------------ speech -> embeddings

    def encode_speech(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Log-mel features (N, n_mels, T) -> speech embeddings (N, S, D_llm), lengths (N,), CTC logits."""
        if self.uses_whisper_bridge:
            paths = self.llm_token_paths(self.transcribe_features(features, feature_lengths))
            embeds, lengths = token_embeddings(paths, self.embedding_table())  # N, S, D_llm
            return embeds, lengths, None
        h, lengths = self.encoder.encode(features, feature_lengths)  # N, T/2, D_enc
        return self.embed_frames(h, lengths)

    @property
    def uses_whisper_bridge(self) -> bool:
        return self.config.bridge.reads_whisper

    def unused_parts(self) -> set[str]:
        """Parts this config never runs (neither loaded nor saved): the compressor and adaptor when
        Whisper's decoder is the recognizer."""
        return {"compressor", "adaptor"} if self.uses_whisper_bridge else set()

    def embed_frames(self, frames: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Encoder frames (N, T, D_enc) -> LLM inputs (N, S, D_llm); also the entry point for cached features."""
        if self.uses_whisper_bridge:
            raise ValueError(
                "the whisper bridge reads its own 30 s windows, not cached encoder frames: "
                "give audio, or use bridge.recognizer=ctc"
            )
        if self.config.bridge.mode != "continuous":
            embeds, out_lengths, _, ctc_logits = self._ctc_bridge(frames, lengths, self.config.bridge.mode)
            return embeds, out_lengths, ctc_logits
        c = self.compressor(frames, lengths)  # N, S, D_c
        y = self.adaptor(c.x)  # N, S, D_llm
        if self.adaptor.config.select == "none":
            return y, c.lengths, c.ctc_logits
        y, out_lengths = self.adaptor.select(y, c.lengths, self.embedding_table())  # N, S', D_llm
        return y, out_lengths, c.ctc_logits

    def _ctc_bridge(
        self, frames: Tensor, lengths: Tensor, mode: str
    ) -> tuple[Tensor, Tensor, list[list[int]], Tensor | None]:
        """The ctc recognizer's bridge (`mode` posterior or top1) over encoder frames (N, T, D_enc): LLM
        inputs (N, S', D_llm), lengths (N,), each sample's label path, and the compressor's CTC logits."""
        bridge = self.config.bridge
        c = self.compressor(frames, lengths)  # N, S, D_c
        table = self.embedding_table()
        logits = self.adaptor.ctc_logits(self.adaptor(c.x), table)  # N, S, V+1
        embeds, out_lengths, paths = ctc_bridge(
            logits, c.lengths, table, mode, bridge.blank_threshold, bridge.temperature
        )
        return embeds, out_lengths, paths, c.ctc_logits

    def transcribe_features(self, features: Tensor, feature_lengths: Tensor) -> list[str]:
        """What the whisper recognizer hears in log-mel features (N, n_mels, T): one text per audio.

        Each 30 s window is decoded over all of its 1500 encoder positions, as Whisper was trained;
        the windows' texts are joined.
        """
        if self.recognizer is None:
            raise ValueError("this model has no Whisper text decoder (bridge.recognizer is not 'whisper')")
        bridge = self.config.bridge
        self._heard_turn = None
        if self.second is not None:  # `bridge.merge_with`: both recognizers' hypotheses rescored together
            first = Hearing(self.encoder, self.recognizer)
            texts, self._heard_turn = transcribe_merged(
                first, self.second, self.turn_scorer, features, feature_lengths, bridge, SILENT_TEXT
            )
            return texts
        choose = self._rescored if bridge.rescore > 0 and bridge.beam_size > 1 else None
        windows = transcribe_windows(
            self.encoder, self.recognizer, features, feature_lengths, bridge.max_tokens, bridge.beam_size, choose,
            bridge.confidence,
        )  # fmt: skip
        if bridge.tidy:
            windows = [[tidy_transcript(t) for t in texts] for texts in windows]
        return [" ".join(texts) for texts in windows]

    def _rescored(self, hypotheses: list[tuple[str, float]]) -> str:
        """The recognizer's finished hypotheses (text, log-probability) rescored by the LLM (`rescore`)."""
        bridge = self.config.bridge
        tidied = candidates(
            [(tidy_transcript(t) if bridge.tidy else t, logp) for t, logp in hypotheses], bridge.candidates
        )
        if len(tidied) == 1:  # nothing to choose between: no LLM pass
            return tidied[0][0]
        texts = [t for t, _ in tidied]
        read = [t or SILENT_TEXT for t in texts]  # scored as the LLM will read it (llm_token_paths)
        chosen = best_by_llm(tidied, self.turn_scorer(read), bridge.rescore, bridge.word_bonus)
        self._heard_turn = self.turn_scorer.turn_state(texts.index(chosen))
        return chosen

    @property
    def turn_scorer(self) -> TurnScorer:
        """The LLM's scorer of transcripts as the user's turn (`bridge.rescore`), made at first use."""
        if self._turn_scorer is None:
            self._turn_scorer = TurnScorer(self.llm, self.processor.tokenizer, self.processor.system_prompt)
        return self._turn_scorer

    def take_heard_turn(self) -> HeardTurn | None:
        """The last transcript rescoring chose, as the LLM ran it (`model.rescore.HeardTurn`: the chat
        template's token ids through that user turn and the assistant's header, the default system
        turn first; the LLM's keys and values of those positions; its logits and hidden state after
        them); then forgotten. None when the last audio heard was not rescored. A prompt that starts
        the same way need not run those positions again (`inference.prompt_cache`)."""
        turn, self._heard_turn = self._heard_turn, None
        return turn

    def llm_token_paths(self, texts: list[str]) -> list[list[int]]:
        """Transcripts -> the LLM's own token ids (a silent audio reads as an ellipsis, never nothing)."""
        tokenizer = self.processor.tokenizer
        return [list(tokenizer.encode(t or SILENT_TEXT, add_special_tokens=False)) for t in texts]

    def hear(self, audios: list[np.ndarray]) -> list[str]:
        """The text the LLM reads for each audio, for a token bridge (top1 path, detokenized)."""
        bridge = self.config.bridge
        if bridge.mode == "continuous":
            raise ValueError("hear() needs a token bridge (bridge.mode posterior or top1), got 'continuous'")
        features, lengths = self.processor.log_mel(audios)
        features, lengths = features.to(self.device), lengths.to(self.device)
        if bridge.recognizer == "whisper":
            return self.transcribe_features(features, lengths)
        _, _, paths, _ = self._ctc_bridge(*self.encoder.encode(features, lengths), "top1")  # the same path either mode
        return [str(self.processor.tokenizer.decode(p)).strip() for p in paths]

    def embedding_table(self) -> Tensor:
        """The LLM's input embedding matrix (V, D_llm)."""
        weight = self.llm.get_input_embeddings().weight
        assert isinstance(weight, Tensor)
        return weight

    def speech_embeddings(self, audios: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        features, feature_lengths = self.processor.log_mel(audios)
        embeds, lengths, _ = self.encode_speech(features.to(self.device), feature_lengths.to(self.device))
        return embeds, lengths

    def embed(self, input_ids: Tensor, speech_embeds: Tensor | None, speech_lengths: Tensor | None) -> Tensor:
        """Token embeddings (B, L, D) with the speech embeddings scattered into the placeholder positions.

        speech_embeds: (N, S, D) for the N audios in order of appearance (row-major over the batch).
        """
        is_speech = input_ids == self.processor.speech_token_id  # B, L
        n_positions = int(is_speech.sum())
        n_frames = int(speech_lengths.sum()) if speech_lengths is not None else 0
        if n_positions != n_frames:
            raise ValueError(
                f"the prompt has {n_positions} speech positions but the audio gives {n_frames} speech embeddings"
            )
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_speech, 0))
        if n_frames == 0:
            return embeds
        assert speech_embeds is not None and speech_lengths is not None
        valid = torch.arange(speech_embeds.shape[1], device=input_ids.device)[None, :] < speech_lengths[:, None]
        flat = speech_embeds[valid].to(embeds.dtype)  # N, S, D -> sum(lengths), D
        return embeds.masked_scatter(is_speech[..., None], flat)

    # ------------------------------------------------------------------ batching

    def prepare(
        self,
        conversations: list[list[Message]],
        answers: list[str] | None = None,
        *,
        left_pad: bool = True,
        frames: list[Tensor] | None = None,
    ) -> Batch:
        """Render, encode and embed a batch; with `answers`, also the training labels (answer tokens only).

        `frames` gives precomputed encoder outputs (T_i, D_enc), one per audio part in order of
        appearance (e.g. from a feature cache); the audio parts' payloads are then not read.
        """
        if not conversations:
            raise ValueError("prepare needs at least one conversation, got none")
        if answers is not None and len(answers) != len(conversations):
            raise ValueError(f"got {len(conversations)} conversations but {len(answers)} answers")
        rendered = [
            self.processor.render(c, None if answers is None else answers[i]) for i, c in enumerate(conversations)
        ]
        audios = [a for r in rendered for a in r.audios]
        speech, lengths = (None, None)
        if frames is not None:
            if len(frames) != len(audios):
                raise ValueError(
                    f"the conversations hold {len(audios)} audio parts but {len(frames)} frame arrays were given"
                )
            if frames:
                frame_lengths = torch.tensor([f.shape[0] for f in frames], device=self.device)
                padded = nn.utils.rnn.pad_sequence([f.to(self.device) for f in frames], batch_first=True)
                speech, lengths, _ = self.embed_frames(padded.to(self.adaptor_dtype), frame_lengths)
        elif audios:
            speech, lengths = self.speech_embeddings(audios)
        return self._collate(rendered, speech, lengths, with_labels=answers is not None, left_pad=left_pad)

    def _collate(
        self,
        rendered: list[Rendered],
        speech: Tensor | None,
        lengths: Tensor | None,
        *,
        with_labels: bool,
        left_pad: bool,
    ) -> Batch:
        per_sample = iter(lengths.tolist() if lengths is not None else [])
        ids, labels, prefixes = [], [], []
        for r in rendered:
            seg = [next(per_sample) for _ in r.audios]
            expanded = self.processor.expand(r.input_ids, seg)
            grown = len(expanded) - len(r.input_ids)  # every placeholder sits in the prompt
            prefix = r.prompt_length + grown
            ids.append(expanded)
            prefixes.append(prefix)
            labels.append([IGNORE_INDEX] * prefix + expanded[prefix:])
        width = max(len(x) for x in ids)
        pad_id = self.processor.tokenizer.pad_token_id

        def pad(seq: list[int], value: int) -> list[int]:
            fill = [value] * (width - len(seq))
            return fill + seq if left_pad else seq + fill

        device = self.device
        input_ids = torch.tensor([pad(x, pad_id) for x in ids], device=device)
        mask = torch.tensor([pad([1] * len(x), 0) for x in ids], device=device)
        return Batch(
            input_ids=input_ids,
            attention_mask=mask,
            inputs_embeds=self.embed(input_ids, speech, lengths),
            prefix_lengths=torch.tensor(prefixes, device=device),
            labels=torch.tensor([pad(x, IGNORE_INDEX) for x in labels], device=device) if with_labels else None,
        )

    def attention_mask_for(self, attention_mask: Tensor, prefix_lengths: Tensor) -> Tensor:
        """The mask the LLM gets: the 2-D padding mask when the prefix is causal, else a 4-D boolean
        prefix-LM mask (B, 1, L, L): bidirectional among prefix positions, causal after, pads never seen."""
        if self.config.prefix_attention == "causal":
            return attention_mask
        length = attention_mask.shape[1]
        valid = attention_mask.bool()
        pos = torch.arange(length, device=valid.device)
        first = length - valid.sum(1)  # left padding: index of the first real token (0 with right padding)
        first = torch.where(valid[:, 0], torch.zeros_like(first), first)
        prefix_end = first + prefix_lengths  # B
        q, k = pos[None, :, None], pos[None, None, :]
        in_prefix = (q < prefix_end[:, None, None]) & (k < prefix_end[:, None, None])
        allowed = ((k <= q) | in_prefix) & valid[:, None, :]
        allowed = allowed | (q == k)  # a pad query attends to itself, so no row is empty
        return allowed[:, None]

    # Saving, loading and generating are functions of the layers above (speechllm.model.checkpoint:
    # save_pretrained(model, dir), from_pretrained(dir); speechllm.inference: generate(model,
    # conversations, GenerationConfig(...))): they use a SpeechLLM, so the class imports none of them.

    # ------------------------------------------------------------------ forward

    def forward(self, batch: Batch) -> Tensor:
        """Mean cross-entropy of the answer tokens (needs `batch.labels`)."""
        if batch.labels is None:
            raise ValueError("forward needs a batch with labels; build it with prepare(conversations, answers)")
        out = self.llm(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=self.attention_mask_for(batch.attention_mask, batch.prefix_lengths),
            position_ids=position_ids(batch.attention_mask),
            labels=batch.labels,
            use_cache=False,
        )
        return out.loss


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted from each sample's first real token (left padding gets position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
