"""The decode step's projections at the paper's sizes: our small-batch kernel
(:func:`mlra.kernels.triton_skinny.skinny_linear_triton`, default launch parameters and a
sweep) beside the module path (RMSNorm + ``F.linear`` per weight, cuBLAS), against the bytes.

Each timing replays a CUDA graph of 20 calls cycling through enough copies of the weights to
overflow the L2 cache (so every call streams its weights from memory, as in a decode step);
``--hot`` uses one copy instead, so weights that fit stay in L2.
``GB/s`` counts weight bytes only; ``% copy`` is against the measured copy bandwidth.

    PYTHONPATH=src python benchmarks/e2e_decode/bench_skinny.py --out "$OUT/skinny"
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from mlra.bench.timing import copy_bandwidth, env_vars
from mlra.kernels.reference import skinny_linear_ref
from mlra.kernels.triton_skinny import (
    SkinnyConfig,
    effective_config,
    row_block,
    skinny_linear_triton,
    tuning_key,
)

# name: (K, output rows per weight, norm, residual, swiglu) -- MLRA-4 / GQA at 2.9B
SHAPES = {
    "q_kv_down (mlra_4)": (3072, (1024, 576), True, False, False),
    "q_kv_down (mla)": (3072, (1536, 576), True, False, False),
    "wq_b (mlra_4)": (1024, (4608,), True, False, False),
    "wq_b (mla)": (1536, (4608,), True, False, False),
    "wo + residual": (3072, (3072,), False, True, False),
    "gate/up swiglu (mlra_4)": (3072, (9880, 9880), True, False, True),
    "down + residual (mlra_4)": (9880, (3072,), False, True, False),
    "q/k/v (gqa)": (3072, (3072, 768, 768), True, False, False),
    "final norm + head": (3072, (50304,), True, False, False),
}
SWEEP = [SkinnyConfig(block_n=bn, block_k=bk, waves=wv, num_warps=4, num_stages=3)
         for (bn, bk), wv in itertools.product(
             ((8, 512), (16, 256), (16, 512), (32, 256), (64, 128)), (1, 2, 4, 8))]
"""``--sweep-set full``: tile shapes x programs per multiprocessor."""

DEPTH = [SkinnyConfig(num_stages=st, num_warps=nw)
         for st, nw in itertools.product((2, 4, 5, 6), (4, 8))]
"""``--sweep-set depth``: the configuration in use with other pipeline depths and warps."""

ROWS_TILES = [SkinnyConfig(block_n=bn, block_k=bk, num_stages=st, num_warps=nw, waves=wv)
              for (bn, bk), st, nw, wv in itertools.product(
                  ((32, 128), (64, 128), (128, 64)), (3, 5), (4, 8), (1, 2))]
"""``--sweep-set depth`` for more than one row: tensor-core tile shapes and depths."""

SPLITS = [SkinnyConfig(block_n=bn, split_k=sk) for bn, sk in itertools.product(
    (8, 16), (1, 2, 3, 4, 6))]
"""``--sweep-set split``: the configuration in use with explicit split-K factors and output
tiles (the programs of one wave against the occupancy: e.g. 1152 programs of 72 registers x
128 threads are 1.25 waves of 7 per multiprocessor)."""

DIRECT = [SkinnyConfig(block_n=bn, block_k=bk, num_stages=st, lane_sums=ls, waves=wv)
          for (bn, bk), st, ls, wv in itertools.product(
              ((4, 1024), (8, 1024), (16, 512), (8, 2048)), (1, 2), (False, True), (2, 4))]
"""``--sweep-set direct``: one-row tiles loaded straight into registers (one stage: no
shared-memory staging, the loads of a wide tile in flight at once) or double-buffered."""


def graph_time(fn, calls: int = 20, reps: int = 10) -> float:
    """Seconds per call of ``fn(i)`` replayed in a CUDA graph of ``calls`` calls."""
    for i in range(3):
        fn(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / calls)
    times.sort()
    return times[len(times) // 2]


def _us(t: float | None) -> str:
    return "" if t is None else f"{t * 1e6:.1f}"


def save(out: Path, lines: list[str], results: list[dict], dev: torch.device, bw: float) -> None:
    """The table, every number, and the tuned launch parameters (``skinny_tuned.json``, the
    format :func:`mlra.kernels.triton_skinny.tuned_config` reads: the best swept config of
    each shape that beat the default)."""
    out.mkdir(parents=True, exist_ok=True)
    tuned = {}
    for r in results:
        if r["best_config"]:
            tuned[tuning_key(row_block(r["rows"]), r["K"], r["ns"], r["swiglu"])] = \
                r["best_config"]
    (out / "skinny_tuned.json").write_text(json.dumps({torch.cuda.get_device_name(dev): tuned},
                                                      indent=2, sort_keys=True) + "\n")
    (out / "skinny.md").write_text("\n".join(lines) + "\n")
    (out / "skinny.json").write_text(json.dumps({"device": torch.cuda.get_device_name(dev),
                                                 "copy_bandwidth_GBps": bw / 1e9,
                                                 "results": results}, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--rows", default="1,8,32", help="batch rows (comma-separated)")
    p.add_argument("--sweep", action="store_true", help="also time every config of SWEEP")
    p.add_argument("--sweep-rows", default="1,8", help="rows the sweep runs for")
    p.add_argument("--sweep-set", default="full", choices=("full", "depth", "split", "direct"),
                   help="full: tile shapes x waves; depth: pipeline depths and warps around "
                   "the configuration in use (and tensor-core tiles above one row); split: "
                   "explicit split-K factors and output tiles; direct: one-row tiles loaded "
                   "into registers without shared-memory staging")
    p.add_argument("--quick", action="store_true",
                   help="skip the no-PDL / no-prefetch / tile-sums columns")
    p.add_argument("--hot", action="store_true",
                   help="one copy of the weights (L2-resident where they fit: 50 MB on an "
                   "H200), to separate a kernel's latency from its memory traffic")
    p.add_argument("--shapes", default=None,
                   help="comma-separated substrings of the projection names to run")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    dt = torch.bfloat16
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    lines = [f"# Small-batch projections, {torch.cuda.get_device_name(dev)}"
             + (" (--hot: one weight copy, L2-resident where it fits)" if args.hot else ""), "",
             f"torch {torch.__version__}, copy bandwidth {bw / 1e9:.0f} GB/s; "
             f"`{' '.join(['python', *sys.argv])}`", "",
             "| projection | rows | weights MB | floor us | ours us (% copy) | best sweep us "
             "(% copy), config | cuBLAS path us (% copy) | ours, no PDL | ours, no prefetch | "
             "ours, tile sums | max rel err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    t0 = time.time()
    shapes = {n: v for n, v in SHAPES.items()
              if not args.shapes or any(part in n for part in args.shapes.split(","))}
    for (name, (K, ns, norm, res, swiglu)), M in itertools.product(shapes.items(), rows_list):
        wbytes = sum(n * K for n in ns) * 2
        copies = 1 if args.hot else max(2, -(-256 * 2**20 // wbytes))
        wsets = [[torch.randn(n, K, device=dev, dtype=dt) * K ** -0.5 for n in ns]
                 for _ in range(copies)]
        x = torch.randn(M, K, device=dev, dtype=dt)
        g = torch.rand(K, device=dev, dtype=dt) + 0.5 if norm else None
        r = torch.randn(M, ns[0], device=dev, dtype=dt) if res else None
        kw = dict(norm_weight=g, eps=1e-6, residual=r, swiglu=swiglu)

        def ours(i, cfg=None, kw=kw, wsets=wsets, x=x):
            return skinny_linear_triton(x, wsets[i % len(wsets)], config=cfg, **kw)

        def ref(i, kw=kw, wsets=wsets, x=x):
            return skinny_linear_ref(x, wsets[i % len(wsets)], **kw)

        exact = skinny_linear_ref(x.float(), [w.float() for w in wsets[0]],
                                  **{**kw, "norm_weight": None if g is None else g.float(),
                                     "residual": None if r is None else r.float()})
        err = max(float((o.float() - e).norm() / e.norm())
                  for o, e in zip(ours(0), exact, strict=True))
        t_ours = graph_time(ours)
        t_ref = graph_time(ref)
        # the same kernels launched plainly / without the L2 prefetch / reducing every tile
        t_plain = t_nopf = t_tile = None
        if not args.quick:
            with env_vars({"MLRA_PDL": "0"}):
                t_plain = graph_time(ours)
            with env_vars({"MLRA_PDL_PREFETCH": "0"}):
                t_nopf = graph_time(ours)
            if M == 1:
                t_tile = graph_time(lambda i: ours(i, SkinnyConfig(lane_sums=False)))
        best = (t_ours, None)
        if args.sweep and str(M) in args.sweep_rows.split(","):
            sweep = {"full": SWEEP, "split": SPLITS, "direct": DIRECT}.get(
                args.sweep_set, DEPTH + (ROWS_TILES if M > 1 else []))
            for partial in sweep:
                cfg = effective_config(dev, M, K, ns, swiglu, partial)
                try:
                    t = graph_time(lambda i, cfg=cfg: ours(i, cfg))
                except Exception as exc:  # a config that does not compile (resources)
                    print(f"{name} M={M} {cfg}: {type(exc).__name__}", flush=True)
                    continue
                if t < best[0]:
                    best = (t, cfg)
        floor = wbytes / bw
        row = {"projection": name, "rows": M, "K": K, "ns": list(ns), "swiglu": swiglu,
               "weight_bytes": wbytes, "floor_us": floor * 1e6,
               "ours_us": t_ours * 1e6, "cublas_path_us": t_ref * 1e6,
               "best_us": best[0] * 1e6,
               "best_config": dataclasses.asdict(best[1]) if best[1] else None,
               "plain_launch_us": None if t_plain is None else t_plain * 1e6,
               "no_prefetch_us": None if t_nopf is None else t_nopf * 1e6,
               "tile_sums_us": None if t_tile is None else t_tile * 1e6,
               "max_rel_err": err}
        results.append(row)
        cfg_text = (", ".join(f"{k}={v}" for k, v in row["best_config"].items() if v)
                    if best[1] else "default")
        lines.append(f"| {name} | {M} | {wbytes / 1e6:.1f} | {floor * 1e6:.1f} | "
                     f"{t_ours * 1e6:.1f} ({floor / t_ours:.0%}) | {best[0] * 1e6:.1f} "
                     f"({floor / best[0]:.0%}), {cfg_text} | {t_ref * 1e6:.1f} "
                     f"({floor / t_ref:.0%}) | {_us(t_plain)} | {_us(t_nopf)} | {_us(t_tile)} | "
                     f"{err:.1e} |")
        print(lines[-1], flush=True)
        del wsets
        torch.cuda.empty_cache()
        if args.out:
            save(Path(args.out), lines, results, dev, bw)
    lines.append(f"\n{time.time() - t0:.0f} s")
    if args.out:
        save(Path(args.out), lines, results, dev, bw)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
