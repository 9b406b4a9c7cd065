"""Registers, spills, shared memory and cache-tile buffers of the latent decode kernel, on a CPU.

The kernel is compiled ahead of time for sm_90 (Triton's bundled ptxas, no GPU) with the
16-byte divisibility the runtime gives its pointer and stride arguments, for one stream of a
given width and query rows, at each configuration given; ``ptxas -v`` reports what it needs
and the TTGIR how many shared-memory buffers each cache tile gets (the pipeline depth). A
first triage before spending GPU time (``benchmarks/decode/NOTES.md``: MLA's default spills).

    python benchmarks/decode/kernel_resources.py --width 512 --rows 64 \\
        --configs "64,64,8,2;32,64,8,2"     # block_n,block_m,warps,stages
"""

from __future__ import annotations

import argparse
import os
import sys


def resources(block_n: int, block_m: int, warps: int, stages: int,
              width: int, page: int = 64, tma: bool = True) -> dict:
    """The compiled kernel's shared memory, ``ptxas`` usage and tile buffers."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
    from pdl_ptx import latent_sm90, tile_buffers

    from mlra.kernels.aot import ptxas_usage

    compiled = latent_sm90(width, block_m, block_n, page, tma, warps, stages)
    buffers = tile_buffers(compiled.asm["ttgir"], block_n, r"\d+")
    return {"shared": compiled.metadata.shared, **ptxas_usage(compiled.asm["ptx"]),
            "buffers": [f"{n}x{w}" for n, w in buffers]}


def main(argv: list[str] | None = None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=512, help="stream width (MLA: 512)")
    p.add_argument("--rows", type=int, default=64, help="query rows (heads x new tokens)")
    p.add_argument("--configs", default="64,64,8,2;32,64,8,2;32,64,8,3;16,64,8,4",
                   help="block_n,block_m,warps,stages;...")
    args = p.parse_args(argv)
    print(f"stream width {args.width}, {args.rows} query rows (sm_90, TMA tiles)\n")
    print("| block N x M | warps | stages | shared KB | registers | spill stores "
          "/ loads (bytes) | cache-tile buffers (count x width) |")
    print("|---|---|---|---|---|---|---|")
    for spec in filter(None, args.configs.split(";")):
        bn, bm, w, st = (int(v) for v in spec.split(","))
        try:
            r = resources(bn, bm, w, st, args.width)
        except Exception as exc:  # beyond the target's resources: say so and go on
            print(f"| {bn} x {bm} | {w} | {st} | failed: {str(exc).splitlines()[0][:60]} "
                  "| | |", flush=True)
            continue
        print(f"| {bn} x {bm} | {w} | {st} | {r['shared'] / 1024:.0f} | {r['registers']} "
              f"| {r['spill_stores']} / {r['spill_loads']} | {', '.join(r['buffers'])} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
