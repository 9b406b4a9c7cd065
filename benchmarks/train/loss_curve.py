"""A short training run of a tiny model on the fused training attention and on the SDPA path,
from the same initialisation on the same batches: the two loss curves should track each other.

    python benchmarks/train/loss_curve.py --variant mlra_4 --steps 200 \
        --out benchmarks/train/results/h200/loss_curve_mlra_4.json

Data: random token sequences from a fixed random bigram model (no downloads), so the loss falls
from ln(vocab) towards the chain's entropy. bf16 autocast, AdamW, one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mlra import ModelConfig, Transformer


def bigram_batches(vocab: int, batch: int, seq: int, steps: int, device: str, seed: int = 0):
    """``steps`` batches of ``[batch, seq + 1]`` tokens from a sparse random bigram chain."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=g) * 3.0
    probs = torch.softmax(logits, dim=-1)
    out = []
    for _ in range(steps):
        x = torch.empty(batch, seq + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(seq):
            x[:, t + 1] = torch.multinomial(probs[x[:, t]], 1, generator=g)[:, 0]
        out.append(x.to(device))
    return out


def run(variant: str, path: str, batches, steps: int, device: str) -> list[float]:
    os.environ["MLRA_DISABLE_TRITON"] = "1" if path == "sdpa" else "0"
    cfg = ModelConfig.preset(variant, size="tiny")
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    losses = []
    for step in range(steps):
        x = batches[step]
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="mlra_4")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="out/train/loss_curve.json")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("this run needs a CUDA GPU (--device cpu runs the SDPA path twice)",
              file=sys.stderr)
        return 2
    vocab = ModelConfig.preset(args.variant, size="tiny").vocab_size
    batches = bigram_batches(vocab, args.batch, args.seq, args.steps, args.device)
    curves = {path: run(args.variant, path, batches, args.steps, args.device)
              for path in ("fused", "sdpa")}
    os.environ.pop("MLRA_DISABLE_TRITON", None)
    f, s = curves["fused"], curves["sdpa"]
    diff = [abs(a - b) for a, b in zip(f, s, strict=True)]
    tail = slice(max(0, args.steps - 20), args.steps)
    summary = {
        "variant": args.variant, "steps": args.steps, "batch": args.batch, "seq": args.seq,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "max_abs_diff": max(diff), "mean_abs_diff": sum(diff) / len(diff),
        "final20_mean": {k: sum(v[tail]) / len(v[tail]) for k, v in curves.items()},
        "curves": curves,
    }
    print(f"{args.variant} tiny, {args.steps} steps of {args.batch} x {args.seq}: loss "
          f"{f[0]:.3f} -> fused {summary['final20_mean']['fused']:.4f} / sdpa "
          f"{summary['final20_mean']['sdpa']:.4f} (mean of the last 20 steps); max |diff| "
          f"{max(diff):.4f}, mean {summary['mean_abs_diff']:.4f}")
    for step in (0, 9, 49, 99, 149, args.steps - 1):
        if step < args.steps:
            print(f"  step {step + 1:4d}: fused {f[step]:.4f}  sdpa {s[step]:.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
