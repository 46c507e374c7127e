"""Distil a padding summary into the `tail` encoder: does a tiny learned correction recover the 30 s encoding?

    OMP_NUM_THREADS=1 python benchmarks/tail_distill.py teacher --clips 3000  # eSpeak: tail features, 30 s states
    OMP_NUM_THREADS=1 python benchmarks/tail_distill.py train --minutes 15    # -> runs/tail_distill/summary.safetensors
    OMP_NUM_THREADS=1 python benchmarks/tail_distill.py eval                  # -> runs/tail_distill/eval.json

In `tail` mode each encoder layer's queries attend to the run (speech + 1 s margin) only; in the 30 s
encoding they also attend to ~1400 padding positions. Here every layer's self-attention in `tail` mode
also attends to M learned key/value vectors per head (the padding summary), whose logits get a learned
bias plus log(number of padding positions the 30 s window would have): M groups of P/M near-identical
padding keys. Step 0 is the silent window's keys/values, averaged over M contiguous groups of its
positions 100..1500. Only these are trained, the encoder frozen, by distillation without labels: the
relative squared L2 error of the tail run's states (speech + margin) against the 30 s encoding of the
same silence-padded features (`whole_windows`), on eSpeak clips of data_out/ctc_char/r*/asr.jsonl only
(never data_out/heldout). `eval` compares 30 s, tail and the corrected tail on the held-out sets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speechllm.config import EncoderConfig
from speechllm.data.audio import load_audio
from speechllm.model.encoder import TAIL_MARGIN_FRAMES, WhisperEncoder, encoder_output_lengths, load_whisper_encoder
from speechllm.model.features import LogMel, log_mel_for

OUT = Path("runs/tail_distill")
POSITIONS = 1500
SOURCE = "bundled:whisper-tiny.en"
GREEDY_SETS = ("festival", "festival_tel", "flite", "human")


class PaddingSummary(nn.Module):
    """M key/value vectors per layer and head standing in for the 30 s window's padding positions."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, m: int) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.zeros(n_layers, n_heads, m, head_dim))
        self.values = nn.Parameter(torch.zeros(n_layers, n_heads, m, head_dim))
        self.bias = nn.Parameter(torch.full((n_layers, n_heads, m), -math.log(m)))


class Patch:
    """Routes `encoder`'s tail runs (`_encode` with a run) through attention that also sees `summary`."""

    def __init__(self, encoder: WhisperEncoder, summary: PaddingSummary) -> None:
        self.summary, self.enabled = summary, True
        self.active = False
        self.log_pad_t: Tensor | None = None
        original = encoder._encode

        def encode(features: Tensor, run: Tensor | None) -> Tensor:
            if run is None or not self.enabled:
                return original(features, run)
            pad = POSITIONS - encoder_output_lengths(run)  # B: positions the 30 s window pads with
            self.log_pad_t = torch.where(pad > 0, pad.clamp(min=1).float().log(), float("-inf"))
            self.active = True
            try:
                return original(features, run)
            finally:
                self.active = False

        encoder._encode = encode  # type: ignore[method-assign]
        for i, layer in enumerate(encoder.layers):
            att = layer.self_attn
            att.forward = self._attention(i, att, att.forward)  # type: ignore[method-assign]

    def _attention(self, i: int, att: Any, original: Any) -> Any:
        def forward(x: Tensor, key_mask: Tensor | None) -> Tensor:
            if not self.active:
                return original(x, key_mask)
            assert self.log_pad_t is not None
            q, k, v = att.heads(att.q_proj(x)), att.heads(att.k_proj(x)), att.heads(att.v_proj(x))
            b, h, t, _ = q.shape
            s = self.summary
            k = torch.cat([k, s.keys[i].to(k.dtype).expand(b, -1, -1, -1)], dim=2)  # B, H, S+M, D/H
            v = torch.cat([v, s.values[i].to(v.dtype).expand(b, -1, -1, -1)], dim=2)
            base = torch.zeros(b, 1, 1, k.shape[2] - s.keys.shape[2], device=x.device)
            if key_mask is not None:
                base = base.masked_fill(~key_mask, float("-inf"))
            bias = s.bias[i][None, :, None, :] + self.log_pad_t.to(x.device)[:, None, None, None]  # B, H, 1, M
            mask = torch.cat([base.expand(b, h, 1, -1), bias], dim=-1).to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return att.out_proj(y.transpose(1, 2).reshape(b, t, -1))

        return forward


def build_encoder(padding: str) -> WhisperEncoder:
    return load_whisper_encoder(EncoderConfig(source=SOURCE, padding=padding, precision="auto")).eval()  # type: ignore[arg-type]


def init_summary(encoder: WhisperEncoder, m: int) -> PaddingSummary:
    """The silent window's keys/values per layer and head, averaged over M groups of positions 100..1500."""
    c = encoder.config
    summary = PaddingSummary(c.n_layers, c.n_heads, c.d_model // c.n_heads, m)
    found: dict[int, tuple[Tensor, Tensor]] = {}
    hooks = []
    for i, layer in enumerate(encoder.layers):

        def hook(module: Any, args: tuple[Tensor, ...], _out: Any, i: int = i) -> None:
            x = args[0]
            found[i] = (module.heads(module.k_proj(x)).float(), module.heads(module.v_proj(x)).float())

        hooks.append(layer.self_attn.register_forward_hook(hook))
    encoder._silence = None
    encoder.silence_states()
    for hk in hooks:
        hk.remove()
    groups = torch.linspace(100, POSITIONS, m + 1).long().tolist()
    with torch.no_grad():
        for i, (k, v) in found.items():
            for j in range(m):
                summary.keys[i, :, j] = k[0, :, groups[j] : groups[j + 1]].mean(1)
                summary.values[i, :, j] = v[0, :, groups[j] : groups[j + 1]].mean(1)
    return summary


def corrected_encoder(path: Path) -> tuple[WhisperEncoder, PaddingSummary]:
    tensors = load_file(str(path))
    encoder = build_encoder("tail")
    c = encoder.config
    summary = PaddingSummary(c.n_layers, c.n_heads, c.d_model // c.n_heads, tensors["keys"].shape[2])
    summary.load_state_dict(tensors)
    Patch(encoder, summary.requires_grad_(False))
    return encoder, summary


def espeak_clips(n: int, seed: int) -> list[Path]:
    """n clips drawn at random from every round of data_out/ctc_char (eSpeak only)."""
    paths = []
    for manifest in sorted(Path("data_out/ctc_char").glob("r*/asr.jsonl")):
        for line in manifest.read_text().splitlines():
            if line.strip():
                paths.append(manifest.parent / json.loads(line)["audio"][0])
    chosen = np.random.default_rng(seed).permutation(len(paths))[:n]
    return [paths[i] for i in chosen]


def teacher(args: argparse.Namespace) -> None:
    """Tail features (n + margin frames) and the 30 s encoding's first run positions of each clip."""
    encoder = build_encoder("tail")
    mel = LogMel(encoder.config.n_mels, margin=TAIL_MARGIN_FRAMES)
    feats, lengths, states = [], [], []
    start = time.time()
    for j, path in enumerate(espeak_clips(args.clips, args.seed)):
        f, n = mel([load_audio(path)])
        if f.shape[-1] > 3000:
            continue
        with torch.no_grad():
            whole = encoder.whole_windows(f, n)  # 1, 1500, D: the 30 s encoding of the silence-padded features
        run = int(encoder_output_lengths(torch.tensor(f.shape[-1])))
        feats.append(f[0].half())
        lengths.append(int(n[0]))
        states.append(whole[0, :run].to(torch.bfloat16))
        if j % 200 == 0:
            print(f"{j} clips, {time.time() - start:.0f} s", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save({"feats": feats, "lengths": lengths, "states": states}, OUT / "teacher.pt")
    print(f"{len(feats)} clips in {time.time() - start:.0f} s -> {OUT / 'teacher.pt'}")


def batch_loss(encoder: WhisperEncoder, data: dict[str, Any], index: list[int]) -> tuple[Tensor, Tensor]:
    """Mean over the batch of relative squared L2 error over the run (speech + margin), and over the speech."""
    feats = [data["feats"][i].float() for i in index]
    n = torch.tensor([data["lengths"][i] for i in index])
    t = torch.tensor([f.shape[-1] for f in feats])
    x = torch.zeros(len(index), feats[0].shape[0], int(t.max()))
    for j, f in enumerate(feats):
        x[j, :, : f.shape[-1]] = f
    run = (n + TAIL_MARGIN_FRAMES + n % 2).clamp(max=t)
    states = encoder._encode(x[..., : int(run.max())], run)  # B, S, D
    total, speech = [], []
    for j, i in enumerate(index):
        target = data["states"][i].float()
        r, sp = min(target.shape[0], states.shape[1]), int(encoder_output_lengths(n[j]))
        err = (states[j, :r] - target[:r]).pow(2).sum(-1)
        norm = target[:r].pow(2).sum(-1)
        total.append(err.sum() / norm.sum())
        speech.append(err[:sp].sum() / norm[:sp].sum())
    return torch.stack(total).mean(), torch.stack(speech).mean()


def train(args: argparse.Namespace) -> None:
    data = torch.load(OUT / "teacher.pt")
    encoder = build_encoder("tail").requires_grad_(False)
    summary = init_summary(encoder, args.m)
    patch = Patch(encoder, summary)
    count = sum(p.numel() for p in summary.parameters())
    order = np.argsort(data["lengths"])  # batches of similar lengths
    n_val = 96
    val = [int(i) for i in order[:: max(1, len(order) // n_val)][:n_val]]
    val_set = set(val)
    pool = [int(i) for i in order if int(i) not in val_set]
    batches = [pool[k : k + args.batch] for k in range(0, len(pool), args.batch)]

    def validate() -> tuple[float, float, float]:
        with torch.no_grad():
            parts = [batch_loss(encoder, data, val[k : k + 32]) for k in range(0, len(val), 32)]
            patch.enabled = False
            base = [batch_loss(encoder, data, val[k : k + 32])[1] for k in range(0, len(val), 32)]
            patch.enabled = True
        return (
            float(np.mean([p[0] for p in parts])),
            float(np.mean([p[1] for p in parts])),
            float(np.mean([float(b) for b in base])),
        )

    v0 = validate()
    print(
        f"{count} parameters, {len(pool)} train clips; val rel sq err run {v0[0]:.4f} speech {v0[1]:.4f} "
        f"(uncorrected speech {v0[2]:.4f})",
        flush=True,
    )
    opt = torch.optim.Adam(summary.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    start, step, seen, log = time.time(), 0, 0, []
    budget = args.minutes * 60
    while time.time() - start < budget:
        for b in rng.permutation(len(batches)):
            frac = min(1.0, (time.time() - start) / budget)
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * frac))
            loss, sp = batch_loss(encoder, data, batches[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step, seen = step + 1, seen + len(batches[b])
            if step % 50 == 0:
                print(
                    f"step {step} ({seen} clips, {time.time() - start:.0f} s) loss {loss.item():.4f} "
                    f"speech {sp.item():.4f}",
                    flush=True,
                )
            if time.time() - start >= budget:
                break
        v = validate()
        log.append({"step": step, "clips_seen": seen, "val_run": v[0], "val_speech": v[1]})
        print(f"epoch end step {step}: val rel sq err run {v[0]:.4f} speech {v[1]:.4f}", flush=True)
        save_file(
            {k: t.detach().contiguous() for k, t in summary.state_dict().items()}, str(OUT / "summary.safetensors")
        )
    info = {
        "parameters": count,
        "m": args.m,
        "train_clips": len(pool),
        "minutes": args.minutes,
        "steps": step,
        "clips_seen": seen,
        "val_start": {"run": v0[0], "speech": v0[1], "uncorrected_speech": v0[2]},
        "log": log,
    }
    (OUT / "train.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info["log"][-1]))


def evaluate(args: argparse.Namespace) -> None:
    sys.path.insert(0, "benchmarks")
    from heldout_table import load_set

    from speechllm.data.transcripts import spoken_text
    from speechllm.eval.metrics import wer
    from speechllm.model.bridge import tidy_transcript
    from speechllm.model.encoder import split_windows
    from speechllm.model.transcriber import encode_windows, repetitive
    from speechllm.model.whisper_decoder import load_whisper_decoder

    decoder = load_whisper_decoder(SOURCE, "float32", "auto")
    encoders = {
        "30s": build_encoder("30s"),
        "tail": build_encoder("tail"),
        "corrected": corrected_encoder(args.summary)[0],
    }
    encoders["corrected"]._silence = encoders["tail"].silence_states()  # the same (unpatched) silent window
    path = OUT / "eval.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.is_file() and args.resume else {}
    data = Path("data_out/heldout")
    for name in args.sets:
        if name in result:
            continue
        samples = load_set(data, name, None if name == "spoken_qa" else args.limit)
        refs = [s.meta.get("question") or spoken_text(s) for s in samples]
        beam = 5 if name == "spoken_qa" else 1
        hyps: dict[str, list[str]] = {m: [] for m in encoders}
        secs: dict[str, float] = {m: 0.0 for m in encoders}
        rel: dict[str, list[float]] = {m: [] for m in encoders if m != "30s"}
        for s in samples:
            audio = load_audio(s.audio[0])
            ref_states = None
            for mode, encoder in encoders.items():
                feats, lengths = log_mel_for(encoder.config)([audio])
                if mode != "30s":
                    decoder.know_window(encoder.silence_states())
                t0 = time.perf_counter()
                with torch.no_grad():
                    states, _ = encode_windows(encoder, feats, lengths)
                secs[mode] += time.perf_counter() - t0
                n = int(encoder_output_lengths(lengths.clamp(max=3000))[0])
                if mode == "30s":
                    ref_states = states[0, :n]
                else:
                    assert ref_states is not None
                    rel[mode].append(float((states[0, :n] - ref_states).norm() / ref_states.norm()))
                texts = decoder.transcribe(states, beam_size=beam)
                again = [j for j, x in enumerate(texts) if repetitive(x)] if mode != "30s" else []
                if again:
                    windows, wl, _ = split_windows(feats, lengths)
                    with torch.no_grad():
                        whole = encoder.whole_windows(windows[again], wl[again])
                    for j, x in zip(again, decoder.transcribe(whole, beam_size=beam)):
                        texts[j] = x
                hyps[mode].append(" ".join(x for x in texts if x))
        row: dict[str, Any] = {"n": len(samples), "beam": beam}
        for mode in encoders:
            row[mode] = {"encoder_s_per_clip": secs[mode] / len(samples)}
            if mode in rel:
                row[mode]["rel_l2_speech"] = float(np.mean(rel[mode]))
                row[mode]["rel_l2_speech_median"] = float(np.median(rel[mode]))
            if name == "spoken_qa":
                row[mode]["exact"] = sum(tidy_transcript(h) == r for h, r in zip(hyps[mode], refs))
            row[mode]["wer"] = wer(refs, hyps[mode])
        row["changed_vs_tail"] = [
            {"ref": r, "tail": a, "corrected": b, "30s": c}
            for r, a, b, c in zip(refs, hyps["tail"], hyps["corrected"], hyps["30s"])
            if a != b
        ]
        result[name] = row
        path.write_text(json.dumps(result, indent=1))
        print(name, json.dumps({m: row[m] for m in encoders}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teacher", help="cache eSpeak clips' tail features and their 30 s states")
    t.add_argument("--clips", type=int, default=3000)
    t.add_argument("--seed", type=int, default=0)
    tr = sub.add_parser("train", help="train the padding summary")
    tr.add_argument("--minutes", type=float, default=15)
    tr.add_argument("--m", type=int, default=4, help="summary vectors per layer and head")
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("eval", help="30 s vs tail vs corrected tail on the held-out sets")
    e.add_argument("--summary", type=Path, default=OUT / "summary.safetensors")
    e.add_argument("--sets", nargs="+", default=[*GREEDY_SETS, "spoken_qa"])
    e.add_argument("--limit", type=int, default=100)
    e.add_argument("--resume", action="store_true", help="keep the sets eval.json already has")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"teacher": teacher, "train": train, "eval": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
