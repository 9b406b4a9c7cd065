"""Launches one-row projections of the paper-size shapes a few times each, for ``ncu`` to
profile (``run_ncu_h200.sh``): ``python ncu_skinny.py "down + residual (mlra_4)" ...``."""

from __future__ import annotations

import sys

import torch
from bench_skinny import SHAPES

from mlra.kernels.triton_skinny import skinny_linear_triton


def main(names: list[str]) -> int:
    dev, dt = torch.device("cuda"), torch.bfloat16
    for name in names or list(SHAPES):
        K, ns, norm, res, swiglu = SHAPES[name]
        ws = [torch.randn(n, K, device=dev, dtype=dt) * K ** -0.5 for n in ns]
        x = torch.randn(1, K, device=dev, dtype=dt)
        g = torch.rand(K, device=dev, dtype=dt) + 0.5 if norm else None
        r = torch.randn(1, ns[0], device=dev, dtype=dt) if res else None
        for _ in range(4):
            skinny_linear_triton(x, ws, norm_weight=g, residual=r, swiglu=swiglu)
        torch.cuda.synchronize()
        print(name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
