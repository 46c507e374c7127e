"""Adaptors: project compressed speech frames (B, T', D_in) into the LLM's embedding space (B, T', D_llm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.config import AdaptorConfig
from speechllm.model.compressor import select_frames


class LinearAdaptor(nn.Module):
    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class MLPAdaptor(nn.Module):
    """Linear -> ReLU -> Linear, LLaMA-Omni's speech adaptor."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SwiGLUAdaptor(nn.Module):
    """RMSNorm, then a SwiGLU MLP (Shazeer, 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(input_dim)
        self.gate = nn.Linear(input_dim, hidden_dim, bias=False)
        self.up = nn.Linear(input_dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, output_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Adaptor(nn.Module):
    """The adaptor `config.kind` names, with the configured output scale."""

    def __init__(self, config: AdaptorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.net: nn.Module
        if config.kind == "linear":
            self.net = LinearAdaptor(input_dim, output_dim)
        elif config.kind == "mlp":
            self.net = MLPAdaptor(input_dim, config.hidden_dim, output_dim)
        elif config.kind == "swiglu":
            self.net = SwiGLUAdaptor(input_dim, config.hidden_dim, output_dim)
        else:
            raise ValueError(f"unknown adaptor kind {config.kind!r}; expected one of linear, mlp, swiglu")
        # The blank row for CTC in the LLM's embedding space (see AdaptorConfig.select).
        self.blank: nn.Parameter | None = None
        self.blank_bias: nn.Parameter | None = None
        if config.select != "none":
            self.blank = nn.Parameter(torch.zeros(output_dim))
            self.blank_bias = nn.Parameter(torch.zeros(()))

    def ctc_logits(self, y: Tensor, table: Tensor) -> Tensor:
        """Adaptor outputs (N, S, D) scored against the LLM's embedding table (V, D) and the blank: (N, S, V+1)."""
        if self.blank is None or self.blank_bias is None:
            raise ValueError("this adaptor has no blank row: set adaptor.select to blank_removal or frame_average")
        return torch.cat([y @ table.T, (y @ self.blank + self.blank_bias)[..., None]], dim=-1)

    def select(self, y: Tensor, lengths: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the non-blank positions of each sample (N, S, D) -> (N, S', D), new lengths (N,)."""
        logits = self.ctc_logits(y, table)  # N, S, V+1
        labels = logits.argmax(-1)
        blank = logits.shape[-1] - 1
        seqs = [
            select_frames(y[i, :n], labels[i, :n], logits[i, :n], blank, self.config.select)
            for i, n in enumerate(lengths.tolist())
        ]
        out_lengths = torch.tensor([s.shape[0] for s in seqs], device=y.device)
        return nn.utils.rnn.pad_sequence(seqs, batch_first=True), out_lengths

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"adaptor expects inputs of width {self.input_dim}, got shape {tuple(x.shape)}")
        y = self.net(x)
        return y * self.config.output_scale if self.config.output_scale != 1.0 else y
