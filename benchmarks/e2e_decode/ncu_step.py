"""Runs the fused batch-1 decode step of a paper-size model a few times without CUDA graphs,
for ``ncu`` to profile chosen kernels in their real place (inputs written by the kernel
before them, as in a step): ``ncu -k regex:_merge_kernel --cache-control none ...
python ncu_step.py --variant mlra_4 --context 8192``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mlra.bench.paged import random_paged_cache
from mlra.decoding import DecodeStep

sys.path.insert(0, str(Path(__file__).parent))
from profile_step import build  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="mlra_4")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    model = build(args.variant, args.context, device)
    cache, table, lens = random_paged_cache(model.config, 1, args.context, 64, torch.bfloat16,
                                            device)
    ids = torch.randint(0, model.config.vocab_size, (1, 1), device=device)
    step = DecodeStep(model, cache, fused=True)
    with torch.no_grad():
        for _ in range(args.steps):
            step(ids, table, lens)
    torch.cuda.synchronize()
    print(f"{args.variant} {args.context}: {args.steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
