"""Where a whole training step's GPU time goes, kernel by kernel (issue 18).

Builds the step of ``bench_train.py`` (same preset, batch, autocast, regional compile, fused
AdamW, gradient clipping), runs it until warm, then profiles ``--steps`` steps with
torch.profiler and prints, per variant, the kernels grouped into classes (matrix products,
the fused attention kernels, compiled elementwise / reduction kernels, the optimizer, the
loss and head, copies, other) and the top kernels by GPU time, in ms per step::

    python benchmarks/train/profile_train_step.py --variants mla,mlra_4 --out DIR

The class of a kernel is read from its name only (see :func:`kernel_class`), so the split is
indicative: the sum of kernel times equals the step only when kernels do not overlap (one
stream, as here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from bench_train import build_training
from kernel_classes import kernel_class


def profile_variant(variant: str, args: argparse.Namespace) -> dict:
    _, _, step = build_training(variant, args.size, args.batch, args.seq, "cuda", True)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.steps):
        step()
    end.record()
    torch.cuda.synchronize()
    step_ms = start.elapsed_time(end) / args.steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[ev.name]
            k[0] += ev.device_time / 1e3 / args.steps  # us -> ms per step
            k[1] += 1
    classes: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        classes[kernel_class(name)] += ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]
    return {
        "variant": variant, "step_ms": step_ms, "kernel_ms": sum(classes.values()),
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
        "top": [{"kernel": n, "class": kernel_class(n), "ms_per_step": v[0],
                 "calls_per_step": v[1] / args.steps} for n, v in top],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="mla,mlra_4")
    p.add_argument("--size", default="1b")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="out/train_profile")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("this profile needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        r = profile_variant(variant, args)
        rows.append(r)
        print(f"## {variant}: {r['step_ms']:.1f} ms per step, kernels {r['kernel_ms']:.1f} ms")
        print("| class | ms per step | share |")
        print("|---|---|---|")
        for cls, ms in r["classes"].items():
            print(f"| {cls} | {ms:.2f} | {100 * ms / r['kernel_ms']:.1f}% |")
        print("\n| kernel | class | calls | ms per step |")
        print("|---|---|---|---|")
        for t in r["top"]:
            print(f"| `{t['kernel'][:90]}` | {t['class']} | {t['calls_per_step']:.0f} | "
                  f"{t['ms_per_step']:.3f} |")
        print(flush=True)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    (out / "train_profile.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
         "args": vars(args), "env": {k: v for k, v in os.environ.items()
                                     if k.startswith("MLRA_")}, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
