"""The batch-1 MLP of the decode step at the paper's sizes: the one-launch kernel
(:func:`mlra.kernels.triton_mlp.swiglu_mlp_triton`, default and a sweep of launch parameters)
beside the two launches it replaces (norm + gate/up, then down + residual:
:func:`mlra.kernels.triton_skinny.skinny_linear_triton`, tuned entries), against the bytes.

Each timing replays a CUDA graph of 20 calls cycling through enough copies of the weights to
overflow the L2 cache (as in a decode step, every call streams its weights from memory).
``% copy`` is against the copy bandwidth measured here; ``max rel err`` against an fp32
reference from the same bf16 weights.

    PYTHONPATH=src python benchmarks/e2e_decode/bench_mlp.py --out "$OUT/mlp"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_skinny import graph_time  # noqa: E402

from mlra.bench.timing import copy_bandwidth  # noqa: E402
from mlra.kernels import triton_mlp  # noqa: E402
from mlra.kernels.reference import swiglu_mlp_ref  # noqa: E402
from mlra.kernels.testing import rel_error  # noqa: E402
from mlra.kernels.triton_mlp import MlpConfig, swiglu_mlp_triton  # noqa: E402
from mlra.kernels.triton_skinny import skinny_linear_triton  # noqa: E402

# name: (d_model, hidden) at the paper's 2.9B
SHAPES = {"mlra_4": (3072, 9880), "mla": (3072, 9448), "gqa": (3072, 9728)}
SWEEP = [MlpConfig(block_h=bh, num_warps=nw, num_stages=st, per_sm=p)
         for bh, nw, st, p in ((1, 4, 3, 1), (1, 4, 4, 1), (1, 4, 5, 1), (1, 4, 6, 1),
                               (1, 8, 5, 1), (2, 4, 4, 1), (2, 8, 4, 1), (1, 4, 3, 2),
                               (1, 4, 3, 3), (1, 4, 4, 2), (2, 4, 3, 2), (1, 2, 3, 4),
                               (1, 4, 2, 4), (2, 8, 3, 2))]
"""``--sweep``: hidden units per loop step x warps x pipeline depth x programs per
multiprocessor (fewer where the compiled kernel does not fit that many at once)."""

NEAR = [MlpConfig(block_h=bh, num_warps=nw, num_stages=st, per_sm=p)
        for bh, nw, st, p in ((2, 4, 5, 1), (2, 4, 6, 1), (2, 4, 3, 1), (4, 4, 3, 1),
                              (4, 8, 3, 1), (2, 8, 5, 1), (4, 4, 2, 1), (2, 2, 4, 2))]
"""``--sweep-set near``: around the default (2 x 4096 tiles, 4 warps, 4 stages, 1 per SM)."""


def time_shape(name: str, dev: torch.device, bw: float, sweep: list[MlpConfig]
               ) -> list[dict]:
    """Every path at one shape: time, share of copy bandwidth, error, determinism."""
    d, h = SHAPES[name]
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16).to(dev)

    nbytes = 3 * d * h * 2
    copies = max(2, -(-(256 << 20) // nbytes))
    sets = []
    for _ in range(copies):
        wg, wu = rnd(h, d, scale=d ** -0.5), rnd(h, d, scale=d ** -0.5)
        wd = rnd(d, h, scale=h ** -0.5)
        sets.append((wg, wu, wd, wd.t().contiguous().t()))
    x = rnd(1, d)
    nw = rnd(d, scale=0.2) + 1.0
    wg, wu, wd, _ = sets[0]
    ref = swiglu_mlp_ref(x.float(), nw.float(), 1e-6, wg.float(), wu.float(), wd.float(),
                         x.float())

    def two(i, cfg=None):
        wg, wu, wd, _ = sets[i % copies]
        (act,) = skinny_linear_triton(x, [wg, wu], norm_weight=nw, eps=1e-6, swiglu=True)
        return skinny_linear_triton(act, [wd], residual=x)[0]

    def one(i, cfg=None):
        wg, wu, _, wdc = sets[i % copies]
        return swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, x, config=cfg)

    floor = nbytes / bw
    cands = [("two launches (gate/up, down)", two, None),
             ("one launch (cooperative grid)", one, None),
             ("one launch, barrier as 2nd launch", one, MlpConfig(one_launch=False)),
             ("one launch, plain grid", one, MlpConfig(cooperative=False))]
    cands += [(f"one launch {c.block_h}x{c.num_warps}w x{c.num_stages} {c.per_sm}/SM",
               one, c) for c in sweep]
    if sweep is SWEEP:
        cands += [(f"two launches {c.block_h}x{c.num_warps}w x{c.num_stages} {c.per_sm}/SM",
                   one, dataclasses.replace(c, one_launch=False)) for c in SWEEP[7:10]]
    rows = []
    for label, fn, cfg in cands:
        row = dict(shape=name, d=d, hidden=h, path=label, mb=nbytes / 1e6, floor_us=floor * 1e6)
        try:
            first = fn(0, cfg)
            err = rel_error(first.float(), ref)
            same = bool(torch.equal(first, fn(0, cfg)))  # counters reset, fixed order
            if fn is one:
                row.update(triton_mlp.LAST_LAUNCH)
            t = graph_time(lambda i, fn=fn, cfg=cfg: fn(i, cfg))
        except Exception as e:  # a configuration that does not compile or fit
            rows.append({**row, "error": type(e).__name__})
            continue
        rows.append({**row, "us": t * 1e6, "pct_copy": 100 * floor / t, "rel_err": err,
                     "repeat_identical": same})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--sweep", action="store_true", help="also time the configurations of SWEEP")
    ap.add_argument("--sweep-set", choices=("wide", "near"), default="wide",
                    help="wide: SWEEP (depth x programs); near: NEAR (around the default)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_mlp.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    t0 = time.time()
    lines = [f"# Batch-1 MLP, {torch.cuda.get_device_name(dev)}", "",
             f"torch {torch.__version__}, copy bandwidth {bw / 1e9:.0f} GB/s; "
             f"`python benchmarks/e2e_decode/bench_mlp.py {' '.join(argv or sys.argv[1:])}`", "",
             "| shape | weights MB | floor us | path | us | % copy | max rel err |",
             "|---|---|---|---|---|---|---|"]
    results = []
    for name in args.shapes.split(","):
        sweep = ([] if not args.sweep else SWEEP if args.sweep_set == "wide" else NEAR)
        for row in time_shape(name, dev, bw, sweep):
            results.append(row)
            form = (f" [{row['programs']} programs, {'one' if row['one_launch'] else 'two'}]"
                    if "programs" in row else "")
            lines.append(f"| {name} | {row['mb']:.1f} | {row['floor_us']:.1f} | "
                         f"{row['path']}{form} | "
                         + (f"{row['us']:.1f} | {row['pct_copy']:.0f}% | {row['rel_err']:.1e} |"
                            if "us" in row else f"failed: {row['error']} | | |"))
            print(lines[-1], flush=True)
    lines += ["", f"{time.time() - t0:.0f} s"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mlp.md").write_text("\n".join(lines) + "\n")
    (args.out / "mlp.json").write_text(json.dumps(dict(
        device=torch.cuda.get_device_name(dev), torch=torch.__version__,
        copy_bandwidth=bw, results=results), indent=1))
    print("\n".join(lines[:6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
