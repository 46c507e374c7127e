"""Measured: a character-CTC head with context layers on frozen Whisper tiny.en (real length) vs Whisper's decoder.

The only recognizer fast enough for the latency target is non-autoregressive. This trains a CTC head
over characters (a-z, 0-9, space, apostrophe + blank) on the frozen Whisper tiny.en encoder run at the
audio's real length (no 30 s padding): LayerNorm + linear 384 -> d, a depthwise convolution, a few
transformer encoder layers, linear to the alphabet. Training audio is eSpeak speech (all 96 English
voices and variants) of the shipped sentences, questions and answers, spoken `--rounds` times with
speed, volume, noise and telephone-band augmentation (telephone on 30 %); SpecAugment-style time and
channel masks on the cached features. Evaluation: greedy CTC on the project's held-out sets (the same
100-sample subsets as `benchmarks/heldout_table.py`), WER with the project's Whisper-style normalisation,
next to Whisper tiny.en's own transcripts of the same samples (`runs/heldout/whisper_tiny_en/<set>.jsonl`),
and the time per utterance of log-mel + encoder (real length) + head, one thread.

Nothing under recipes/heldout_text/ or data_out/heldout/ is trained on; the last 100 shipped sentences
are a dev set (text never trained on, eSpeak voices).

Rerun (one CPU thread each; data and checkpoints are git-ignored)::

    export OMP_NUM_THREADS=1
    python benchmarks/ctc_char_head.py data --rounds 16         # data_out/ctc_char/ (resumes)
    python benchmarks/ctc_char_head.py train --minutes 46       # runs/ctc_char/ (as measured; checkpoints every 3 min)
    python benchmarks/ctc_char_head.py train --minutes 46 --resume   # after an interruption
    python benchmarks/ctc_char_head.py eval                     # table + runs/ctc_char/summary.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from speechllm.atomic import atomic_path, atomic_write_text
from speechllm.config import EncoderConfig
from speechllm.data.audio import load_audio
from speechllm.data.augment import AugmentConfig
from speechllm.data.builders import SynthesisOptions, build_asr, read_questions, read_sentences, shipped_text
from speechllm.data.encoding import encoder_fn
from speechllm.data.feature_cache import FeatureCache, encode_manifest
from speechllm.data.manifest import Sample, read_manifest, write_manifest
from speechllm.data.tts import EspeakEngine
from speechllm.eval.metrics import cer, wer
from speechllm.model.ctc import collapse
from speechllm.model.encoder import load_whisper_encoder
from speechllm.model.features import LogMel

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz0123456789"  # index 0 is the CTC blank; char i -> i + 1
HELDOUT_SETS = ("festival", "festival_tel", "human")
N_DEV = 100
AUGMENT = AugmentConfig(
    speed_prob=0.4, speed_range=(0.85, 1.15), volume_prob=0.5, volume_db_range=(-15.0, 3.0),
    noise_prob=0.4, snr_db_range=(5.0, 30.0), telephone_prob=0.3,
)  # fmt: skip


def normalize(text: str) -> str:
    """Lowercase, hyphens and slashes to spaces, everything outside ALPHABET dropped, spaces collapsed."""
    text = re.sub(r"[-/]", " ", text.lower().replace("\u2019", "'"))
    text = "".join(c for c in text if c in ALPHABET)
    return re.sub(r" +", " ", text).strip()


def encode_text(text: str) -> list[int]:
    return [ALPHABET.index(c) + 1 for c in normalize(text)]


def greedy(logits: torch.Tensor) -> str:
    """(T, C) -> text: best class per frame, repeats merged, blanks dropped (`model.ctc.collapse`)."""
    labels = collapse(logits.argmax(-1).tolist(), blank=0)
    return re.sub(r" +", " ", "".join(ALPHABET[k - 1] for k in labels)).strip()


def load_encoder(precision: str):
    return load_whisper_encoder(EncoderConfig(padding="real", precision=precision))


# --- data ---------------------------------------------------------------------------------------


def train_texts() -> tuple[list[str], list[str]]:
    sentences = read_sentences(shipped_text("sentences.txt"))
    questions = read_questions(shipped_text("questions.jsonl"))
    texts = sentences[:-N_DEV] + [q.question for q in questions] + [q.answer for q in questions if q.answer]
    return list(dict.fromkeys(t for t in texts if normalize(t))), sentences[-N_DEV:]


def cmd_data(args: argparse.Namespace) -> None:
    voices = [f"espeak:{v}" for v in EspeakEngine().voices()]
    texts, dev_texts = train_texts()
    out: Path = args.data
    train: list[Sample] = []
    for r in range(args.rounds):
        opts = SynthesisOptions(voices=voices, augment=AUGMENT, seed=1000 + r)
        train += build_asr(texts, out / f"r{r}", opts, id_prefix=f"r{r}", workers=1)
    dev_opts = SynthesisOptions(voices=voices, augment=AUGMENT, seed=7)
    dev = build_asr(dev_texts, out / "dev", dev_opts, id_prefix="dev", workers=1)
    write_manifest(out / "train.jsonl", train)
    write_manifest(out / "dev.jsonl", dev)
    encoder = load_encoder(args.precision)
    with FeatureCache(out / f"cache-{args.precision}", encoder.fingerprint()) as cache:
        for name in ("train.jsonl", "dev.jsonl"):
            stats = encode_manifest(read_manifest(out / name), cache, encoder_fn(encoder), batch_size=16)
            print(f"{name}: {stats['encoded']:.0f} encoded, rtf {stats['rtf']:.4f}")
    hours = sum(s.meta["seconds"] for s in train) / 3600
    tel = np.mean([bool(s.meta["augment"].get("telephone")) for s in train])
    print(f"train: {len(train)} utterances, {hours:.2f} h, {len(texts)} texts, {len(voices)} voices, tel {tel:.2f}")
    print(f"dev: {len(dev)} utterances")


# --- model --------------------------------------------------------------------------------------


class CharCTCHead(nn.Module):
    """(B, T, 384) frozen encoder features -> (B, T, len(ALPHABET) + 1) CTC logits."""

    def __init__(self, d_in: int = 384, d: int = 256, layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d), nn.Dropout(dropout))
        self.conv = nn.Conv1d(d, d, kernel_size=5, padding=2, groups=d)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, len(ALPHABET) + 1))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]  # B, T; True where padded
        h = self.inp(x)
        h = h + self.conv(h.masked_fill(pad[..., None], 0.0).transpose(1, 2)).transpose(1, 2)
        return self.out(self.layers(h, src_key_padding_mask=pad))


# --- training -----------------------------------------------------------------------------------


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Zero 2 time spans (each up to 8 % of the utterance, at most 25 frames) and 2 channel bands (up to 48)."""
    x = x.clone()
    for i, n in enumerate(lengths.tolist()):
        for _ in range(2):
            w = int(rng.integers(0, max(1, min(25, int(0.08 * n))) + 1))
            t0 = int(rng.integers(0, max(1, n - w)))
            x[i, t0 : t0 + w] = 0.0
        for _ in range(2):
            w = int(rng.integers(0, 49))
            c0 = int(rng.integers(0, x.shape[2] - w))
            x[i, :, c0 : c0 + w] = 0.0
    return x


def make_batches(lengths: list[int], max_frames: int, rng: np.random.Generator) -> list[list[int]]:
    """Indices grouped by similar length (sorted after a little jitter), at most `max_frames` padded frames each."""
    order = np.argsort(np.asarray(lengths) + rng.uniform(0, 15, len(lengths)))
    batches, cur, longest = [], [], 0
    for i in order.tolist():
        longest2 = max(longest, lengths[i])
        if cur and longest2 * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest2 = [], lengths[i]
        cur.append(i)
        longest = longest2
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(cache: FeatureCache, samples: list[Sample], idx: list[int]) -> tuple[torch.Tensor, ...]:
    feats = [torch.from_numpy(np.asarray(cache.get(samples[i].id), dtype=np.float32)) for i in idx]
    targets = [torch.tensor(encode_text(samples[i].target)) for i in idx]
    x = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    xl = torch.tensor([len(f) for f in feats])
    return x, xl, torch.cat(targets), torch.tensor([len(t) for t in targets])


def ctc_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, xl, y, yl = batch
    logp = model(x, xl).log_softmax(-1).transpose(0, 1)  # T, B, C
    return nn.functional.ctc_loss(logp, y, xl, yl, blank=0, reduction="mean", zero_infinity=True)


@torch.no_grad()
def dev_eval(model: nn.Module, cache: FeatureCache, dev: list[Sample]) -> tuple[float, float]:
    model.eval()
    losses, hyps = [], []
    for start in range(0, len(dev), 16):
        batch = collate(cache, dev, list(range(start, min(start + 16, len(dev)))))
        losses.append(float(ctc_loss(model, batch)) * len(batch[1]))
        logits = model(batch[0], batch[1])
        hyps += [greedy(logits[i, : int(n)]) for i, n in enumerate(batch[1])]
    model.train()
    return sum(losses) / len(dev), wer([s.target for s in dev], hyps)


def lr_at(frac: float, step: int, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine to 5 % of peak over the time budget."""
    warm = min(1.0, (step + 1) / warmup)
    return peak * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def cmd_train(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train = [s for s in read_manifest(args.data / "train.jsonl")]
    dev = read_manifest(args.data / "dev.jsonl")
    encoder = load_encoder(args.precision)
    cache = FeatureCache(args.data / f"cache-{args.precision}", encoder.fingerprint())
    del encoder
    train = [s for s in train if s.id in cache and encode_text(s.target)]
    lengths = [len(cache.get(s.id)) for s in train]
    model = CharCTCHead(d=args.d, layers=args.layers, heads=args.heads)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    state = {"step": 0, "seconds": 0.0, "epoch": 0, "seen": 0, "log": []}
    ckpt = out / "last.pt"
    if args.resume and ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        print(f"resumed at step {state['step']}, {state['seconds'] / 60:.1f} min")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(train)} train utterances, {sum(lengths) / 50 / 3600:.2f} h; head {n_params / 1e6:.2f} M parameters")
    budget = args.minutes * 60
    rng = np.random.default_rng([1, state["step"]])
    last_save = time.monotonic()
    running = None
    bar = tqdm(total=int(budget), initial=int(state["seconds"]), unit="s", desc="train")
    model.train()
    while state["seconds"] < budget:
        batches = make_batches(lengths, args.max_frames, np.random.default_rng([2, state["epoch"]]))
        for b, idx in enumerate(batches):
            if b < state.get("batch", 0):  # resumed mid-epoch: these batches were trained on
                continue
            if state["seconds"] >= budget:
                break
            state["batch"] = b + 1
            t0 = time.monotonic()
            for g in opt.param_groups:
                g["lr"] = lr_at(state["seconds"] / budget, state["step"], args.lr, args.warmup)
            x, xl, y, yl = collate(cache, train, idx)
            loss = ctc_loss(model, (spec_augment(x, xl, rng), xl, y, yl))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
            state["step"] += 1
            state["seen"] += len(idx)
            dt = time.monotonic() - t0
            state["seconds"] += dt
            bar.update(dt)
            bar.set_postfix(step=state["step"], loss=f"{running:.3f}", ep=state["epoch"])
            if time.monotonic() - last_save > args.save_every * 60 or state["seconds"] >= budget:
                dev_loss, dev_wer = dev_eval(model, cache, dev)
                state["log"].append(
                    {"step": state["step"], "minutes": round(state["seconds"] / 60, 2), "seen": state["seen"],
                     "train_loss": round(running, 4), "dev_loss": round(dev_loss, 4), "dev_wer": round(dev_wer, 4)}
                )  # fmt: skip
                tqdm.write(json.dumps(state["log"][-1]))
                config = {"d": args.d, "layers": args.layers, "heads": args.heads, "precision": args.precision,
                          "train_utterances": len(train), "train_hours": round(sum(lengths) / 50 / 3600, 2),
                          "max_frames": args.max_frames, "lr": args.lr, "minutes": args.minutes}  # fmt: skip
                saved = {"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "config": config}
                with atomic_path(ckpt) as tmp:
                    torch.save(saved, tmp)
                last_save = time.monotonic()
        else:
            state["epoch"] += 1
            state["batch"] = 0
    bar.close()
    print(f"done: {state['step']} steps, {state['seen']} utterances seen, {state['seconds'] / 60:.1f} min")


# --- evaluation ---------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from heldout_table import load_set

    saved = torch.load(args.out / "last.pt", weights_only=False)
    cfg = saved["config"]
    model = CharCTCHead(d=cfg["d"], layers=cfg["layers"], heads=cfg["heads"])
    model.load_state_dict(saved["model"])
    model.eval()
    encoder = load_encoder(cfg["precision"])
    encoder.eval()
    log_mel = LogMel(encoder.config.n_mels, pad_to_30s=False)
    results: dict[str, dict] = {}
    timing = {"audio_s": 0.0, "mel_s": 0.0, "encoder_s": 0.0, "head_s": 0.0, "n": 0}
    dev = read_manifest(args.data / "dev.jsonl")
    sets = {name: load_set(args.heldout, name, args.limit) for name in HELDOUT_SETS}
    sets["dev_espeak"] = dev
    with torch.inference_mode():
        for name, samples in sets.items():
            hyps = []
            for s in tqdm(samples, desc=name, unit="utt"):
                audio = load_audio(s.audio[0])
                t0 = time.perf_counter()
                feats, lengths = log_mel([audio])
                t1 = time.perf_counter()
                hidden, out_len = encoder.encode(feats, lengths)
                t2 = time.perf_counter()
                logits = model(hidden.float(), out_len)[0, : int(out_len[0])]
                hyps.append(greedy(logits))
                t3 = time.perf_counter()
                if name != "dev_espeak":
                    timing["audio_s"] += len(audio) / 16000
                    timing["mel_s"] += t1 - t0
                    timing["encoder_s"] += t2 - t1
                    timing["head_s"] += t3 - t2
                    timing["n"] += 1
            refs = [s.target for s in samples]
            row = {"n": len(samples), "ctc_wer": wer(refs, hyps), "ctc_cer": cer(refs, hyps)}
            whisper_path = args.whisper / f"{name}.jsonl"
            if whisper_path.is_file():
                cached = {r["id"]: r["hypothesis"] for r in map(json.loads, whisper_path.read_text().splitlines()) if r}
                have = [i for i, s in enumerate(samples) if s.id in cached]
                row["whisper_n"] = len(have)
                row["whisper_wer"] = wer([refs[i] for i in have], [cached[samples[i].id] for i in have])
                row["whisper_cer"] = cer([refs[i] for i in have], [cached[samples[i].id] for i in have])
                row["ctc_wer_same_ids"] = wer([refs[i] for i in have], [hyps[i] for i in have])
            row["examples"] = [{"id": s.id, "ref": s.target, "ctc": h} for s, h in list(zip(samples, hyps))[:5]]
            results[name] = row
    n = max(1, timing["n"])
    per_utt = {k: round(1000 * timing[k] / n, 2) for k in ("mel_s", "encoder_s", "head_s")}
    per_utt["audio_s_mean"] = round(timing["audio_s"] / n, 2)
    summary = {
        "checkpoint": saved["state"] | {"log": saved["state"]["log"][-3:]},
        "config": cfg,
        "head_parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "ms_per_utterance": per_utt,
        "sets": results,
    }
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1))
    print("\n| set | n | char-CTC head WER | CER | Whisper tiny.en decoder WER (same ids) | CER |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        wh = f"{r['whisper_wer']:.3f} (n={r['whisper_n']}) | {r['whisper_cer']:.3f}" if "whisper_wer" in r else "- | -"
        print(f"| {name} | {r['n']} | {r['ctc_wer']:.3f} | {r['ctc_cer']:.3f} | {wh} |")
    print(f"\nper utterance (mean {per_utt['audio_s_mean']} s of audio, 1 thread): log-mel {per_utt['mel_s']} ms, "
          f"encoder {per_utt['encoder_s']} ms, head + greedy {per_utt['head_s']} ms")  # fmt: skip
    for name, r in results.items():
        print(f"\n{name}:")
        for e in r["examples"][:3]:
            print(f"  ref: {e['ref']}\n  ctc: {e['ctc']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("data", "train", "eval"))
    parser.add_argument("--data", type=Path, default=Path("data_out/ctc_char"))
    parser.add_argument("--out", type=Path, default=Path("runs/ctc_char"))
    parser.add_argument("--heldout", type=Path, default=Path("data_out/heldout"))
    parser.add_argument("--whisper", type=Path, default=Path("runs/heldout/whisper_tiny_en"))
    parser.add_argument("--precision", default="auto", help="encoder precision: auto (bfloat16 with AMX) or float32")
    parser.add_argument("--rounds", type=int, default=16, help="times each training text is spoken")
    parser.add_argument("--minutes", type=float, default=50.0, help="training budget (the cosine schedule spans it)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-frames", type=int, default=8000, help="padded encoder frames per batch")
    parser.add_argument("--limit", type=int, default=100, help="samples per held-out set")
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"data": cmd_data, "train": cmd_train, "eval": cmd_eval}[args.command](args)


if __name__ == "__main__":
    main()
