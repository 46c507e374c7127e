"""LLaMA-Omni's speech decoder: LLM hidden states -> discrete units, non-autoregressively, with CTC.

Each answer token's LLM hidden state (the last-layer state that predicted it) is projected to
the decoder width, optionally summed with the projected embedding of the token itself, and
repeated λ (`upsample`) times; a few pre-norm transformer layers with causal attention over a
bounded window read the result and a linear layer gives log-probabilities over K units + blank
(Fang et al., 2024, "LLaMA-Omni", section 2.3). Greedy CTC decoding collapses repeats and drops
blanks.

Streaming: the attention is causal and each position sees at most `window` positions, so a new
token's λ positions depend only on a bounded cache. `DecoderState.push` computes exactly those
λ positions from the cached keys and values of the previous `window - 1` positions: a step costs
the same at token 10 as at token 2,000 (LLaMA-Omni's reference code re-runs the decoder over
the whole history at every step), and the streamed units equal the offline ones. Positions use
rotary embeddings on absolute indices so that the cache stays valid.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speechllm.atomic import atomic_directory
from speechllm.config import from_dict, save_config
from speechllm.model.ctc import StreamingCollapse, collapse
from speechllm.speech_out.config import SpeechDecoderConfig

CONFIG_FILE = "speech_decoder.yaml"
WEIGHTS_FILE = "speech_decoder.safetensors"


def rotary(x: Tensor, positions: Tensor) -> Tensor:
    """Rotate pairs of channels of x (B, H, T, Dh) by angles of the absolute positions (T,)."""
    half = x.shape[-1] // 2
    inv = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    angles = positions.float()[:, None] * inv[None, :]  # T, Dh/2
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, c: SpeechDecoderConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.LayerNorm(c.dim)
        self.qkv = nn.Linear(c.dim, 3 * c.dim)
        self.proj = nn.Linear(c.dim, c.dim)
        self.norm2 = nn.LayerNorm(c.dim)
        self.ffn = nn.Sequential(nn.Linear(c.dim, c.ffn_dim), nn.GELU(), nn.Linear(c.ffn_dim, c.dim))
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self, x: Tensor, positions: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C) at `positions` (T,); mask (T, T_past + T) True = may attend.

        Returns the output and this call's keys and values (B, H, T_past + T, Dh) for a cache.
        """
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        # B, T, 3C -> 3, B, H, T, Dh
        q, k = rotary(q, positions), rotary(k, positions)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # B, H, T, Dh
        x = x + self.dropout(self.proj(a.transpose(1, 2).reshape(b, t, c)))  # B, H, T, Dh -> B, T, C
        x = x + self.dropout(self.ffn(self.norm2(x)))
        return x, (k, v)


class SpeechDecoder(nn.Module):
    """`forward(hidden, embeds, lengths)`: hidden and embeds (B, N, D_llm) for N answer tokens ->
    log-probabilities (B, N*λ, K+1) and output lengths (B,). The blank is unit id K."""

    def __init__(self, config: SpeechDecoderConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.in_proj = nn.Linear(c.llm_dim, c.dim)
        self.embed_proj = nn.Linear(c.llm_dim, c.dim) if c.token_embedding else None
        # The λ copies of one token differ by a learned offset, so CTC can place different units on them.
        self.sub_position = nn.Parameter(torch.randn(c.upsample, c.dim) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.num_units + 1)

    @property
    def blank(self) -> int:
        return self.config.num_units

    def _inputs(self, hidden: Tensor, embeds: Tensor | None) -> Tensor:
        """(B, N, D_llm) -> (B, N*λ, C)."""
        if hidden.shape[-1] != self.config.llm_dim:
            raise ValueError(
                f"speech decoder expects LLM states of width {self.config.llm_dim}, got {hidden.shape[-1]}"
            )
        x = self.in_proj(hidden)
        if self.embed_proj is not None:
            if embeds is None:
                raise ValueError("this speech decoder reads token embeddings too (token_embedding=True); pass embeds")
            x = x + self.embed_proj(embeds)
        b, n, c = x.shape
        lam = self.config.upsample
        x = x[:, :, None, :] + self.sub_position[None, None]  # B, N, 1, C + λ, C -> B, N, λ, C
        return x.reshape(b, n * lam, c)  # B, N, λ, C -> B, N*λ, C

    def window_mask(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """True where a query may attend a key: causal, within `window` positions."""
        d = q_positions[:, None] - k_positions[None, :]
        return (d >= 0) & (d < self.config.window)

    def forward(self, hidden: Tensor, embeds: Tensor | None, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self._inputs(hidden, embeds)
        pos = torch.arange(x.shape[1], device=x.device)
        mask = self.window_mask(pos, pos)
        for layer in self.layers:
            x, _ = layer(x, pos, mask)
        return self.out(self.norm(x)).log_softmax(-1), lengths * self.config.upsample

    def ctc_loss(self, hidden: Tensor, embeds: Tensor | None, lengths: Tensor, units: list[list[int]]) -> Tensor:
        """Mean CTC loss per unit of the deduplicated target units of each row."""
        log_probs, out_lengths = self(hidden, embeds, lengths)
        targets = torch.tensor([u for seq in units for u in seq], dtype=torch.long, device=hidden.device)
        target_lengths = torch.tensor([len(seq) for seq in units], dtype=torch.long, device=hidden.device)
        too_long = target_lengths > out_lengths
        if bool(too_long.any()):
            i = int(too_long.nonzero()[0])
            raise ValueError(
                f"row {i} has {int(target_lengths[i])} units for {int(lengths[i])} tokens: more than "
                f"upsample={self.config.upsample} units a token; raise speech_decoder.upsample"
            )
        loss = F.ctc_loss(
            log_probs.transpose(0, 1),  # B, T, K+1 -> T, B, K+1
            targets,
            out_lengths,
            target_lengths,
            blank=self.blank,
            reduction="sum",
            zero_infinity=True,
        )
        return loss / target_lengths.sum().clamp(min=1)

    @torch.no_grad()
    def decode(self, hidden: Tensor, embeds: Tensor | None) -> list[int]:
        """Offline greedy CTC units of one answer: hidden, embeds (N, D_llm)."""
        log_probs, _ = self(hidden[None], None if embeds is None else embeds[None], torch.tensor([hidden.shape[0]]))
        return collapse(log_probs[0].argmax(-1).tolist(), self.blank)

    def state(self) -> DecoderState:
        return DecoderState(self)

    def save(self, directory: str | Path) -> None:
        """`speech_decoder.safetensors` + `speech_decoder.yaml`, written into a temporary folder then renamed."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            save_config(self.config, tmp / CONFIG_FILE)

        with atomic_directory(directory) as tmp:
            write(tmp)

    @classmethod
    def load(cls, directory: str | Path) -> SpeechDecoder:
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{d} holds no speech decoder ({CONFIG_FILE} missing)")
        model = cls(from_dict(SpeechDecoderConfig, yaml.safe_load((d / CONFIG_FILE).read_text())))
        model.load_state_dict({k: v.float() for k, v in load_file(str(d / WEIGHTS_FILE)).items()})
        return model.eval()


class DecoderState:
    """Incremental decoding: `push(hidden, embed)` for one new token (D_llm,) -> the new units.

    Keeps, per layer, the keys and values of the last `window - 1` positions only.
    """

    def __init__(self, decoder: SpeechDecoder) -> None:
        self.decoder = decoder.eval()
        self.cache: list[tuple[Tensor, Tensor] | None] = [None] * len(decoder.layers)
        self.next_position = 0
        self.collapse = StreamingCollapse(decoder.blank)
        self.units: list[int] = []
        self.log_probs: Tensor | None = None
        """The last push's log-probabilities (λ, K+1)."""

    @torch.no_grad()
    def push(self, hidden: Tensor, embed: Tensor | None) -> list[int]:
        dec, keep = self.decoder, self.decoder.config.window - 1
        x = dec._inputs(hidden[None, None], None if embed is None else embed[None, None])  # 1, λ, C
        lam = x.shape[1]
        pos = torch.arange(self.next_position, self.next_position + lam, device=x.device)
        past_len = 0 if self.cache[0] is None else self.cache[0][0].shape[2]
        k_pos = torch.arange(self.next_position - past_len, self.next_position + lam, device=x.device)
        mask = dec.window_mask(pos, k_pos)
        for i, layer in enumerate(dec.layers):
            x, (k, v) = layer(x, pos, mask, self.cache[i])
            self.cache[i] = (k[:, :, -keep:], v[:, :, -keep:]) if keep else (k[:, :, :0], v[:, :, :0])
        self.next_position += lam
        self.log_probs = dec.out(dec.norm(x)).log_softmax(-1)[0]  # λ, K+1
        labels = self.log_probs.argmax(-1).tolist()
        new = self.collapse.push(labels)
        self.units += new
        return new


def units_per_token(units: list[int], tokens: int) -> float:
    """How many deduplicated units one token carries: upsample must stay above the maximum."""
    return len(units) / max(tokens, 1)


def suggested_upsample(ratios: list[float], margin: float = 1.25) -> int:
    """λ for a dataset: CTC needs one position per unit plus blanks between repeats."""
    return max(1, math.ceil(max(ratios) * margin))
