"""Registers, spills and shared memory of the one-row projection kernel at the paper's tuned
shapes, without and with preloaded K tiles: compiled for sm_90 on a CPU (Triton's ptxas -v,
no GPU). From the repository root:

    env -u TRITON_INTERPRET PYTHONPATH=src:tests \
        python benchmarks/e2e_decode/results/h200/preload/skinny_regs.py
"""

from __future__ import annotations

import inspect

from pdl_ptx import skinny_types  # tests/: the kernel's argument types

from mlra.kernels.aot import compile_sm90, ptxas_usage
from mlra.kernels.triton_skinny import _skinny_kernel

# name: (weights, K, block_n, block_k, stages, lane sums, norm, residual, tiles in K)
SHAPES = {
    "q/kv down": (2, 3072, 4, 1024, 1, True, True, False, 3),
    "q up": (1, 1024, 8, 1024, 1, True, True, False, 1),
    "output projection": (1, 3072, 8, 512, 3, True, False, True, 4),
    "head": (1, 3072, 8, 1024, 1, False, True, False, 3),
}


def main() -> None:
    types = skinny_types()
    params = inspect.signature(_skinny_kernel.fn).parameters
    aligned = [p for p in params if types.get(p, "").startswith("*")
               or p in ("K", "stride_xm", "stride_rm", "sw1", "sw2", "sw3", "so1", "so2", "so3")]
    print("| projection | tile, stages | preloaded tiles | registers | spill stores | shared B |")
    print("|---|---|---|---|---|---|")
    for name, (nw, k, bn, bk, st, lane, norm, res, most) in SHAPES.items():
        for pre in sorted({0, min(2, most), most}):
            consts = dict(NUM_W=nw, SWIGLU=False, HAS_NORM=norm, HAS_RES=res, SPLIT_K=1,
                          K_SPLIT=k, NUM_STAGES=st, BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk,
                          ALIGNED=True, PDL=2, PF_LINES=16, LINE=64, LANE_SUMS=lane,
                          PRELOAD=pre)
            kern = compile_sm90(_skinny_kernel, types, consts, aligned, num_warps=4,
                                num_stages=st, launch_pdl=True)
            use = ptxas_usage(kern.asm["ptx"])
            print(f"| {name} | {bn} x {bk}, {st} | {pre} | {use['registers']} | "
                  f"{use['spill_stores']} | {kern.metadata.shared} |")


if __name__ == "__main__":
    main()
