"""Compiles the latent decode kernel (and the projection kernel) ahead of time for sm_90 with
its default launch parameters and writes, per case, the leading dimension of every
shared-memory buffer of a cache (weight) tile in its TTGIR:
``python tests/pipeline_ttgir.py OUT.json`` (run by ``test_pipeline_depth.py`` in a process
without ``TRITON_INTERPRET``).

Pointer and stride arguments carry the 16-byte divisibility the runtime gives them (without
it no load is pipelined at all, which would hide the property checked)."""

from __future__ import annotations

import json
import sys

# (name, query rows = Tq x heads, stream width, page, TMA): the paper-size MLRA-4 (24 heads per
# stream), the 64-head TP-4 shape, a page of 16 (pointer loads), and 256-wide streams (GLA-2
# at TP 2, MLRA-2 at 2.9B)
CASES = [("mlra4_2p9b", 24, 128, 64, True), ("mlra4_tp4", 64, 128, 64, True),
         ("page16", 24, 128, 16, False), ("gla2_tp2", 32, 256, 64, True),
         ("mlra2_2p9b", 24, 256, 64, True)]


def latent_tile_buffers(rows: int, w: int, page: int, tma: bool) -> list[int]:
    from pdl_ptx import latent_sm90, tile_buffers

    from mlra.kernels.triton_latent import default_latent_config

    cfg = default_latent_config(1, w, 64, rows, page)
    compiled = latent_sm90(w, cfg.block_m, cfg.block_n, page, tma, cfg.num_warps,
                           cfg.num_stages)
    return [n for n, _ in tile_buffers(compiled.asm["ttgir"], cfg.block_n, f"{w}|64")]


def skinny_weight_buffers(rows: int, aligned_k: bool) -> list[int]:
    """The projection kernel's weight-tile buffers for one-row (dot products) or 32-row
    (``tl.dot``) tiles, its default pipeline depth; ``aligned_k``: K and the row strides
    divisible by 16 (K = 3072) or only by 8 (K = 9880, the 2.9B models' MLP width: the runtime
    then gives them no divisibility and the kernel must establish it itself)."""
    from pdl_ptx import skinny_types, tile_buffers

    from mlra.kernels.aot import compile_sm90
    from mlra.kernels.triton_skinny import _skinny_kernel, default_skinny_config

    cfg = default_skinny_config(rows, 9880)
    bm, bn, bk = (1 if rows == 1 else 32), cfg.block_n, cfg.block_k
    types = skinny_types()
    consts = dict(NUM_W=1, SWIGLU=False, HAS_NORM=False, HAS_RES=True, SPLIT_K=2,
                  K_SPLIT=8 * bk, NUM_STAGES=cfg.num_stages, BLOCK_M=bm, BLOCK_N=bn,
                  BLOCK_K=bk, ALIGNED=True, PDL=0, PF_LINES=0, LINE=64,
                  LANE_SUMS=bool(cfg.lane_sums))
    aligned = [n for n in types if types[n].startswith("*")] + ["stride_rm", "so1"]
    if aligned_k:
        aligned += ["K", "stride_xm", "sw1", "sw2", "sw3"]
    compiled = compile_sm90(_skinny_kernel, types, consts, aligned,
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return [n for n, _ in tile_buffers(compiled.asm["ttgir"], bn, str(bk))]


SKINNY_CASES = [("skinny_1row_k9880", 1, False), ("skinny_32rows_k9880", 32, False),
                ("skinny_1row_k3072", 1, True)]


def main(out: str) -> int:
    result = {name: latent_tile_buffers(rows, w, page, tma)
              for name, rows, w, page, tma in CASES}
    result.update({name: skinny_weight_buffers(rows, aligned)
                   for name, rows, aligned in SKINNY_CASES})
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
