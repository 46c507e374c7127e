"""Whisper's pretrained text decoder as a plain PyTorch module, with batched greedy decoding.

The default model's connector needs a recognizer that hears voices it was never trained on, and
no CTC head trainable on this CPU comes close to the decoder Whisper was pretrained with on
680,000 hours of people (Radford et al. 2022). So the token bridge can take its token path from
this decoder: it reads the same encoder states the rest of the model reads, and its transcript is
handed to the LLM as the LLM's own token embeddings (see `speechllm.model.bridge`).

Parameter names follow Hugging Face's `WhisperDecoder`; `speechllm.weights.whisper_decoder` maps a
CTranslate2 checkpoint onto them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.model.encoder import WhisperAttention
from speechllm.model.precision import lower_linears, resolve_precision, resolve_screening
from speechllm.model.transcriber import Transcriber, whisper_pick

SCREEN_K = 64
"""Logits recomputed exactly per row when screening (`WhisperTextDecoder.screen_logits`): a beam of 5
takes its next tokens from each row's best 10."""


@dataclass
class DecoderArch:
    """The architecture and special tokens of a Whisper text decoder (read from its checkpoint)."""

    vocab_size: int = 51864
    d_model: int = 384
    n_layers: int = 4
    n_heads: int = 6
    ffn_dim: int = 1536
    max_positions: int = 448
    prompt: list[int] = field(default_factory=lambda: [50257, 50362])
    """Tokens that start every transcript: <|startoftranscript|> (+ language, task) + <|notimestamps|>."""
    eot: int = 50256
    suppress: list[int] = field(default_factory=list)
    """Never emitted (punctuation-like symbols Whisper's own decoding suppresses, and special tokens)."""
    suppress_begin: list[int] = field(default_factory=lambda: [220, 50256])
    """Not emitted as the first token (a bare space, end of text)."""
    specials_from: int | None = 50257
    """Ids from here on are special tokens (start of transcript, languages, timestamps ...): never emitted."""


class _DecoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = WhisperAttention(d_model, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.encoder_attn = WhisperAttention(d_model, n_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(
        self, x: Tensor, cache: dict[str, Tensor], self_mask: Tensor | None, cross_mask: Tensor | None
    ) -> Tensor:
        """One step over new positions x (B, T, D); `cache` holds this layer's self and cross keys/values."""
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.heads(self.self_attn.k_proj(h)), self.self_attn.heads(self.self_attn.v_proj(h))
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)  # B, H, S+T, D/H
        cache["k"], cache["v"] = k, v
        x = x + self.self_attn.attend(h, k, v, self_mask)
        x = x + self._cross_attend(self.encoder_attn_layer_norm(x), cache["xk"], cache["xv"], cross_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))

    def _cross_attend(self, h: Tensor, xk: Tensor, xv: Tensor, cross_mask: Tensor | None) -> Tensor:
        """Cross-attention of h (B, T, D) over encoder keys/values (B or 1, H, S, D/H).

        One sample's beams share its encoder keys/values (a batch-1 cache): their queries are then
        attended as one sample's B*T queries, which is exact (no query sees another) and spares
        broadcasting the keys to B copies, which the CPU kernel would materialise at every step.
        """
        b, t, d = h.shape
        if xk.shape[0] == b:
            return self.encoder_attn.attend(h, xk, xv, cross_mask)
        if xk.shape[0] != 1 or (cross_mask is not None and cross_mask.shape[0] != 1):
            raise ValueError(f"encoder keys for batch {xk.shape[0]} do not fit queries for batch {b}")
        y = self.encoder_attn.attend(h.reshape(1, b * t, d), xk, xv, cross_mask)  # B, T, D -> 1, B*T, D
        return y.view(b, t, d)


class WhisperTextDecoder(Transcriber, nn.Module):
    """Whisper's decoder: token + learned position embeddings, pre-LN layers with cross-attention,
    logits against the (tied) token embedding matrix."""

    def __init__(self, arch: DecoderArch, detokenize: Callable[[list[int]], str] | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.detokenize = detokenize
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.embed_positions = nn.Embedding(arch.max_positions, arch.d_model)
        self.layers = nn.ModuleList(
            _DecoderLayer(arch.d_model, arch.n_heads, arch.ffn_dim) for _ in range(arch.n_layers)
        )
        self.layer_norm = nn.LayerNorm(arch.d_model)
        self.logits_table: Tensor | None = None
        """A lower-precision copy of the token table for the logits (`lower_precision`); None: the table."""
        self.screen_table: Tensor | None = None
        """A bfloat16 copy of the token table that screens the float32 logits (`screen_logits`)."""
        self.screen_k = 0
        self._known: tuple[Tensor, list[dict[str, Tensor]]] | None = None
        """A window's states (S, D) whose cross-attention keys/values are kept (`know_window`)."""

    def know_window(self, window: Tensor) -> None:
        """Keep the cross-attention keys and values of `window` (S, D): encoder positions equal to its
        (a `tail` encoding's silent part) then reuse them instead of projecting them again."""
        if self._known is None or self._known[0] is not window:
            with torch.no_grad():
                self._known = (window, self._project(window[None]))

    @property
    def matmul_dtype(self) -> torch.dtype:
        """The dtype the logits and the linear layers multiply in (`lower_precision`)."""
        return self.embed_tokens.weight.dtype if self.logits_table is None else self.logits_table.dtype

    def lower_precision(self, dtype: torch.dtype) -> None:
        """Multiply the linear layers and the logits in `dtype` (weights held in it; the logits read a
        copy of the token table, whose rows stay float32 as inputs); norms, softmax, residual sums
        and logits stay float32 (`model.precision`)."""
        lower_linears(self.layers, dtype)
        self.logits_table = self.embed_tokens.weight.detach().to(dtype)

    def screen_logits(self, k: int = SCREEN_K) -> None:
        """Compute each step's logits against a bfloat16 copy of the token table, then recompute the
        `k` largest of each row exactly in float32 (the table is read from memory at every step, and
        in bfloat16 half as much of it: the step's largest cost). The chosen tokens' logits are the
        float32 ones; only the softmax's normaliser sums the others' bfloat16 estimates."""
        if k < 1:
            raise ValueError(f"screen_logits needs k >= 1, got {k}")
        if self.logits_table is not None:
            raise ValueError("the logits already read a lower-precision table (lower_precision): nothing to screen")
        self.screen_table, self.screen_k = self.embed_tokens.weight.detach().to(torch.bfloat16), k

    def _logits(self, h: Tensor) -> Tensor:
        """Logits (B, V) in float32 of final hidden states h (B, D) against the tied token table."""
        if self.screen_table is not None:
            table = self.embed_tokens.weight
            logits = F.linear(h.to(torch.bfloat16), self.screen_table).float()  # B, V: estimates
            top = logits.topk(min(self.screen_k, logits.shape[-1]), dim=-1).indices  # B, k
            exact = torch.einsum("bd,bkd->bk", h.to(table.dtype), table[top])  # B, k
            return logits.scatter_(-1, top, exact.float())
        table = self.embed_tokens.weight if self.logits_table is None else self.logits_table
        return F.linear(h.to(table.dtype), table).float()  # beam scores add up in float32 whatever the table's

    def _project(self, states: Tensor) -> list[dict[str, Tensor]]:
        """Each layer's cross-attention keys and values (B, H, S, D/H) of encoder states (B, S, D)."""
        states = states.to(self.embed_positions.weight.dtype)  # the residual stream's (float32)
        caches = []
        for layer in self.layers:
            assert isinstance(layer, _DecoderLayer)
            att = layer.encoder_attn
            caches.append({"xk": att.heads(att.k_proj(states)), "xv": att.heads(att.v_proj(states))})
        return caches

    def _cross_cache(self, states: Tensor) -> list[dict[str, Tensor]]:
        """`_project(states)`, the positions from which every sample's states equal the known
        window's (`know_window`) taken from its kept keys and values."""
        if self._known is None or self._known[0].shape[0] != states.shape[1]:
            return self._project(states)
        window, kept = self._known
        same = (states == window.to(states.dtype)).all(dim=-1).all(dim=0)  # S: every sample equals the window
        start = states.shape[1] - int(same.flip(0).int().cumprod(0).sum())  # where the shared suffix begins
        head = self._project(states[:, :start])
        b = states.shape[0]
        return [
            {name: torch.cat([h[name], k[name][:, :, start:].expand(b, -1, -1, -1)], dim=2) for name in ("xk", "xv")}
            for h, k in zip(head, kept)
        ]

    def _step(self, tokens: Tensor, start: int, caches: list[dict[str, Tensor]], cross_mask: Tensor | None) -> Tensor:
        """Logits (B, V) of the last of `tokens` (B, T), which sit at positions start .. start+T-1."""
        t = tokens.shape[1]
        x = self.embed_tokens(tokens) + self.embed_positions.weight[start : start + t]  # B, T, D
        self_mask = None
        if t > 1:  # the prompt: causal among itself (later steps see every cached position)
            self_mask = torch.ones(t, start + t, dtype=torch.bool, device=tokens.device).tril(start)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cache, self_mask, cross_mask)
        return self._logits(self.layer_norm(x[:, -1]))  # B, D -> B, V (tied output)

    @torch.no_grad()
    def greedy(self, states: Tensor, lengths: Tensor | None = None, max_tokens: int = 128) -> list[list[int]]:
        """Greedy transcripts of encoder states (B, S, D): the text tokens of each, without specials.

        `lengths` (B,) masks encoder positions past each sample's end (None: attend to all S, as
        Whisper does over its 30 s window).
        """
        a = self.arch
        b, s, _ = states.shape
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        max_tokens = min(max_tokens, a.max_positions - len(a.prompt))
        cross_mask = None
        if lengths is not None:
            cross_mask = (torch.arange(s, device=states.device)[None, :] < lengths[:, None])[:, None, None, :]
        caches = self._cross_cache(states)
        suppress, begin = self._suppressed(states.device)
        tokens = torch.tensor([a.prompt] * b, device=states.device)
        out: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=states.device)
        start = 0
        for step in range(max_tokens):
            logits = self._step(tokens, start, caches, cross_mask)  # B, V
            start += tokens.shape[1]
            logits = logits.masked_fill(begin if step == 0 else suppress, float("-inf"))
            nxt = logits.argmax(-1)  # B
            done |= nxt == a.eot
            for i in (~done).nonzero().flatten().tolist():
                out[i].append(int(nxt[i]))
            if bool(done.all()):
                break
            tokens = nxt[:, None]
        return out

    def _suppressed(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Masks (V,) of tokens never emitted, and of tokens not emitted first."""
        a = self.arch
        suppress = torch.zeros(a.vocab_size, dtype=torch.bool, device=device)
        suppress[[i for i in a.suppress if i < a.vocab_size]] = True
        if a.specials_from is not None:
            suppress[a.specials_from :] = True
        begin = suppress.clone()
        begin[[i for i in a.suppress_begin if i < a.vocab_size]] = True
        return suppress, begin

    @torch.no_grad()
    def beam_search(self, states: Tensor, beam_size: int = 5, max_tokens: int = 128) -> list[int]:
        """The best transcript of one sample's encoder states (1, S, D) by beam search: text tokens.

        Finished hypotheses are ranked by mean log-probability per token (Whisper's default without a
        length penalty); the search stops once `beam_size` hypotheses have finished.
        """
        return whisper_pick(self.nbest(states, beam_size, max_tokens))

    @torch.no_grad()
    def nbest(self, states: Tensor, beam_size: int = 5, max_tokens: int = 128) -> list[tuple[list[int], float]]:
        """Every hypothesis `beam_search` finished for one sample's states (1, S, D): text tokens and
        summed log-probability, in the order they finished (the live beams if none did)."""
        a = self.arch
        if states.shape[0] != 1:
            raise ValueError(f"beam_search decodes one sample at a time, got states of shape {tuple(states.shape)}")
        max_tokens = min(max_tokens, a.max_positions - len(a.prompt))
        suppress, begin = self._suppressed(states.device)
        caches = self._cross_cache(states)
        seqs: list[list[int]] = [[]]
        scores = torch.zeros(1, device=states.device)
        finished: list[tuple[list[int], float]] = []
        tokens, start = torch.tensor([a.prompt], device=states.device), 0
        for step in range(max_tokens):
            logits = self._step(tokens, start, caches, None)  # live, V
            start += tokens.shape[1]
            logp = logits.masked_fill(begin if step == 0 else suppress, float("-inf")).log_softmax(-1)
            # The best 2 * beam_size of all (hypothesis, token) pairs lie within each hypothesis' own
            # best 2 * beam_size: ranking those (live * 2B) gives the same candidates as ranking live * V.
            row_best, row_tokens = logp.topk(min(2 * beam_size, a.vocab_size), dim=-1)  # live, 2B
            total, row_tokens = (scores[:, None] + row_best).flatten(), row_tokens.flatten()  # live * 2B
            keep_seqs, keep_scores, source = [], [], []
            # Best first: an end of text ranked above the last kept hypothesis finishes one (as in
            # Whisper's own beam search); those ranked below it are not candidates at all.
            for value, index in zip(*total.topk(min(2 * beam_size, total.numel()))):
                hyp, token = int(index) // row_best.shape[1], int(row_tokens[index])
                if token == a.eot:
                    finished.append((seqs[hyp], float(value)))
                    continue
                keep_seqs.append([*seqs[hyp], token])
                keep_scores.append(value)
                source.append(hyp)
                if len(keep_seqs) == beam_size:
                    break
            if len(finished) >= beam_size or not keep_seqs:
                break
            index_t = torch.tensor(source, device=states.device)
            for cache in caches:  # follow each kept hypothesis' history (encoder keys are shared)
                cache["k"], cache["v"] = cache["k"].index_select(0, index_t), cache["v"].index_select(0, index_t)
            seqs, scores = keep_seqs, torch.stack(keep_scores)
            tokens = torch.tensor([[s[-1]] for s in seqs], device=states.device)
        if not finished:
            finished = [(s, float(v)) for s, v in zip(seqs, scores)]
        return finished


def load_whisper_decoder(
    source: str, precision: str = "float32", logits: str = "exact", adapter: str | None = None
) -> WhisperTextDecoder:
    """The pretrained text decoder (with its tokenizer) of the Whisper checkpoint `source` names, its
    weights in `precision` (`model.precision.resolve_precision`; the matmuls then run in it too), its
    float32 logits screened in bfloat16 or not (`logits`: `model.precision.resolve_screening`), with
    the low-rank adapters of the file `adapter` merged into its weights (`bridge.adapter`)."""
    from speechllm.weights.decoder_adapter import merge_deltas, read_adapter
    from speechllm.weights.errors import WeightsError
    from speechllm.weights.whisper_decoder import read_whisper_decoder

    sd, arch, tokenizer = read_whisper_decoder(source)
    if adapter is not None:
        sd = merge_deltas(sd, read_adapter(adapter))
    decoder = WhisperTextDecoder(DecoderArch(**arch), detokenize=lambda ids: tokenizer.decode(ids))
    missing, unexpected = decoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{source}: decoder weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if resolve_precision(precision, torch.device("cpu")) == "bfloat16":
        decoder.lower_precision(torch.bfloat16)
    elif resolve_screening(logits, torch.device("cpu")):
        decoder.screen_logits()
    return decoder.eval()
