"""The Whisper encoder as a plain PyTorch module.

Parameter names follow Hugging Face's `WhisperEncoder`, so an HF checkpoint's encoder weights load
as they are and a CTranslate2 checkpoint maps onto the same names (see `speechllm.weights`).
Unlike the HF module this one accepts inputs shorter than 30 s: on a CPU, encoding 5 s of audio
at its real length is about 6x cheaper than encoding 30 s of padding with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.config import EncoderConfig
from speechllm.model.precision import resolve_precision

WINDOW_FRAMES = 3000  # mel frames in Whisper's 30 s window (100 frames a second)
TAIL_MARGIN_FRAMES = 100
"""Silence the `tail` encoder reads past each audio's end (1 s): on 40 held-out people clips, 0.5 s
let Whisper's decoder loop on one of them, 1 s and 2 s did not (README, Figures)."""
TAIL_SILENCE = -0.75
"""The log-mel value (after Whisper's normalisation) of the silent window whose states complete a
`tail` encoding: the floor of a clip peaking at log10 power 1 (the floor is max - 8, then (x + 4) / 4).
Completing with each clip's own floor (-1.0 to -0.5 on the held-out sets) gave the same greedy
transcripts on 160 held-out clips."""


class WhisperAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)  # Whisper's key has no bias
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # B, T, D -> B, H, T, D/H

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Queries from x (B, T, D) over keys/values (B, H, S, D/H); mask bool, broadcastable to (B, H, T, S)."""
        y = F.scaled_dot_product_attention(self.heads(self.q_proj(x)), k, v, attn_mask=mask)
        b, _, t, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1))  # B, H, T, D/H -> B, T, D

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """Self-attention. x: (B, T, D); key_mask: (B, 1, 1, T) bool, True where a key may be attended."""
        return self.attend(x, self.heads(self.k_proj(x)), self.heads(self.v_proj(x)), key_mask)


class WhisperEncoderLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = WhisperAttention(d_model, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


def encoder_output_lengths(n_frames: Tensor) -> Tensor:
    """Encoder positions for `n_frames` mel frames: conv2 (kernel 3, stride 2, pad 1) gives ceil(T/2)."""
    return (n_frames + 1) // 2


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: two convolutions, sinusoidal positions, pre-LN transformer layers.

    `forward(features, lengths)` takes log-mel features (B, n_mels, T) with T <= 3000 and the
    number of real frames of each, and returns the selected hidden state (B, ceil(T/2), D) with
    positions past each sample's length zeroed, plus the output lengths (B,). Longer inputs go
    through `encode`, which cuts them into 30 s windows.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
        self.config = config
        self.conv1 = nn.Conv1d(c.n_mels, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(c.max_positions, c.d_model)
        self.embed_positions.weight.data.copy_(sinusoids(c.max_positions, c.d_model))
        self.layers = nn.ModuleList(WhisperEncoderLayer(c.d_model, c.n_heads, c.ffn_dim) for _ in range(c.n_layers))
        self.layer_norm = nn.LayerNorm(c.d_model)
        # A learned mix of all hidden states (embeddings + every layer); trains even when the encoder is frozen.
        self.layer_weights = nn.Parameter(torch.zeros(c.n_layers + 1)) if c.layer == "weighted" else None
        self._silence: Tensor | None = None  # silence_states(), once computed in eval mode

    @property
    def dim(self) -> int:
        return self.config.d_model

    def forward(self, features: Tensor, lengths: Tensor, *, trim: bool = True) -> tuple[Tensor, Tensor]:
        """`trim=False` keeps every position of the window (Whisper's own decoder reads all 1500 in
        `30s` and `tail` modes; `tail` completes the positions past each audio's run with the states
        of a silent window, see `silence_states`)."""
        b, n_mels, t = features.shape
        if n_mels != self.config.n_mels:
            raise ValueError(
                f"encoder expects {self.config.n_mels} mel bins, got features of shape {tuple(features.shape)}"
            )
        if t > WINDOW_FRAMES:
            raise ValueError(
                f"forward takes at most {WINDOW_FRAMES} frames (30 s), got {t}; use encode() for longer audio"
            )
        out_lengths = encoder_output_lengths(lengths)
        padding = self.config.padding
        if padding == "30s":
            states = self._encode(F.pad(features, (0, WINDOW_FRAMES - t)), None)  # B, 1500, D
        else:
            # `tail` runs the speech and the silence after it (LogMel's margin), the even number of
            # frames the convolution's stride keeps whole.
            run = lengths
            if padding == "tail":
                run = (lengths + TAIL_MARGIN_FRAMES + lengths % 2).clamp(max=t)
            features = features[..., : int(run.max())] if b else features
            states = self._encode(features, run)  # B, ceil(run / 2), D
            if padding == "tail" and not trim:
                window = self._complete(states, encoder_output_lengths(run))  # B, 1500, D
                return window, torch.full_like(out_lengths, window.shape[1])
        if not trim:
            return states, torch.full_like(out_lengths, states.shape[1])
        t_out = int(out_lengths.max()) if b else 0
        h = states[:, :t_out]
        valid = torch.arange(t_out, device=h.device)[None, :] < out_lengths[:, None]  # B, T'
        return h * valid[..., None].to(h.dtype), out_lengths

    def _encode(self, features: Tensor, run: Tensor | None) -> Tensor:
        """Hidden states (B, ceil(T/2), D) of features (B, n_mels, T). `run` (B,): the frames each sample
        encodes as if alone (the convolutions see zeros past them, attention masks them); None: every
        frame, over the whole window, as Whisper was trained (attending to its padding)."""
        if run is not None:
            # The convolutions must see zeros past each sample's run, exactly as the zero padding of
            # an unbatched run, or the last frames would differ by batch.
            in_mask = (torch.arange(features.shape[-1], device=features.device)[None, :] < run[:, None])[:, None, :]
            features = features * in_mask
        x = F.gelu(self.conv1(features))  # B, n_mels, T -> B, D, T
        if run is not None:
            x = x * in_mask
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # B, D, T -> B, D, T/2 -> B, T/2, D
        x = x + self.embed_positions.weight[: x.shape[1]]
        key_mask = None
        out_run = None if run is None else encoder_output_lengths(run)
        if out_run is not None and bool((out_run < x.shape[1]).any()):
            key_mask = (torch.arange(x.shape[1], device=x.device)[None, :] < out_run[:, None])[:, None, None, :]
        low = resolve_precision(self.config.precision, x.device) == "bfloat16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):  # see encoder.precision
            return self._run_layers(x, key_mask).to(features.dtype)

    def whole_windows(self, windows: Tensor, lengths: Tensor) -> Tensor:
        """States (W, 1500, D) of windows (W, n_mels, T <= 3000) encoded over the whole 30 s as Whisper
        was trained, whatever `padding` says (the `tail` recognizer's fallback). Frames past each
        window's `lengths` and its silence margin become its silence: its smallest value, the floor
        Whisper's normalisation clamps to (what `LogMel(pad_to_30s=True)` gives there). Other modes'
        windows are encoded as they are (a `30s` encoder's features hold that silence already)."""
        t = windows.shape[-1]
        if self.config.padding != "tail":
            return self._encode(F.pad(windows, (0, WINDOW_FRAMES - t)), None)
        end = (lengths + TAIL_MARGIN_FRAMES).clamp(max=t)  # W
        kept = torch.arange(t, device=windows.device)[None, :] < end[:, None]  # W, T
        floor = windows.masked_fill(~kept[:, None, :], float("inf")).amin(dim=(1, 2))  # W
        whole = floor[:, None, None].expand(-1, windows.shape[1], WINDOW_FRAMES).clone()  # W, n_mels, 3000
        whole[..., :t] = torch.where(kept[:, None, :], windows, whole[..., :t])
        return self._encode(whole, None)

    def silence_states(self) -> Tensor:
        """The states (1500, D) of a silent 30 s window (log-mel `TAIL_SILENCE` everywhere), encoded as
        Whisper was trained; kept while the module stays in eval mode (`train()` forgets them)."""
        w = self.conv1.weight
        cached = self._silence
        if cached is None or cached.device != w.device or cached.dtype != w.dtype or self.training:
            silent = torch.full((1, self.config.n_mels, WINDOW_FRAMES), TAIL_SILENCE, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                cached = self._encode(silent, None)[0].detach()  # 1500, D
            self._silence = None if self.training else cached
        return cached

    def _complete(self, states: Tensor, out_run: Tensor) -> Tensor:
        """Window states (B, 1500, D): each sample's first `out_run` positions of `states` (B, S, D),
        the rest the silent window's (`silence_states`)."""
        silence = self.silence_states().to(states.dtype)  # 1500, D
        s = states.shape[1]
        own = torch.arange(s, device=states.device)[None, :] < out_run[:, None]  # B, S
        head = torch.where(own[..., None], states, silence[:s])
        return torch.cat([head, silence[s:].expand(states.shape[0], -1, -1)], dim=1)

    def train(self, mode: bool = True) -> WhisperEncoder:
        self._silence = None  # weights may change while training
        return super().train(mode)

    def _run_layers(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        layer = self.config.layer
        keep_all = layer == "weighted"
        hidden = [x] if keep_all else []
        for i, block in enumerate(self.layers):
            if isinstance(layer, int) and layer == i and layer >= 0:
                return x  # hidden state i: the output of the i-th layer (0: the embeddings)
            x = block(x, key_mask)
            if keep_all:
                hidden.append(x)
        if isinstance(layer, int) and layer == len(self.layers):
            return x  # last layer, before the final norm
        if not keep_all:
            return self.layer_norm(x)
        hidden[-1] = self.layer_norm(x)
        assert self.layer_weights is not None
        w = torch.softmax(self.layer_weights, dim=0)
        return torch.einsum("l,lbtd->btd", w, torch.stack(hidden))  # L+1, B, T, D -> B, T, D

    def encode(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Like forward, for any length: cuts each input into 30 s windows and concatenates their outputs.

        features: (B, n_mels, T) any T; lengths: (B,) real frames. Returns (B, T', D), (B,).
        """
        if features.shape[-1] <= WINDOW_FRAMES:
            return self(features, lengths)
        b = features.shape[0]
        windows, wl, owner = split_windows(features, lengths)
        t_max = int(encoder_output_lengths(wl).max())
        h, out_l = self(windows[..., : 2 * t_max], wl)  # W, n_mels, T -> W, T', D
        pieces: list[list[Tensor]] = [[] for _ in range(b)]
        for j, i in enumerate(owner):
            pieces[i].append(h[j, : int(out_l[j])])
        seqs = [torch.cat(p) for p in pieces]
        out_lengths = torch.tensor([s.shape[0] for s in seqs], device=features.device)
        return nn.utils.rnn.pad_sequence(seqs, batch_first=True), out_lengths

    def fingerprint(self) -> str:
        """A hash of the config and every weight: keys caches of this encoder's outputs."""
        h = hashlib.sha256(repr(sorted(vars(self.config).items())).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def split_windows(features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """Cut each input (B, n_mels, T) into 30 s windows, the last zero-padded: windows
    (W, n_mels, 3000), their real frames (W,), and the input each came from (W,)."""
    windows, win_lengths, owner = [], [], []
    for i, n in enumerate(lengths.tolist()):
        for start in range(0, max(int(n), 1), WINDOW_FRAMES):
            w = features[i, :, start : start + WINDOW_FRAMES]
            windows.append(F.pad(w, (0, WINDOW_FRAMES - w.shape[-1])))
            win_lengths.append(min(WINDOW_FRAMES, max(int(n) - start, 1)))
            owner.append(i)
    return torch.stack(windows), torch.tensor(win_lengths, device=features.device), owner


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed positional embedding (sin in the first half of channels, cos in the second)."""
    if channels % 2:
        raise ValueError(f"sinusoidal embeddings need an even width, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


def load_whisper_encoder(config: EncoderConfig) -> WhisperEncoder:
    """Build the encoder that `config.source` names, with its weights; `random` builds a fresh one."""
    if config.source == "random":
        return WhisperEncoder(config)
    from speechllm.weights.errors import WeightsError
    from speechllm.weights.whisper import whisper_encoder_weights

    sd, arch, directory = whisper_encoder_weights(config)
    encoder = WhisperEncoder(dataclasses.replace(config, **arch))
    missing, _unexpected = encoder.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "layer_weights"]
    if missing:
        raise WeightsError(f"{directory}: checkpoint lacks encoder weights {missing[:5]}")
    return encoder
