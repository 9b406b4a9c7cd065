"""Compiles the latent decode kernel ahead of time for sm_90 with its default launch
parameters and writes, per case, the leading dimension of every shared-memory buffer of a
cache tile in its TTGIR: ``python tests/pipeline_ttgir.py OUT.json`` (run by
``test_pipeline_depth.py`` in a process without ``TRITON_INTERPRET``).

Pointer and stride arguments carry the 16-byte divisibility the runtime gives them (without
it no load is pipelined at all, which would hide the property checked)."""

from __future__ import annotations

import inspect
import json
import re
import sys

# (name, query rows = Tq x heads, stream width, page, TMA): the paper-size MLRA-4 (24 heads per
# stream), the 64-head TP-4 shape, and a page of 16 (pointer loads)
CASES = [("mlra4_2p9b", 24, 128, 64, True), ("mlra4_tp4", 64, 128, 64, True),
         ("page16", 24, 128, 16, False)]


def tile_buffers(rows: int, w: int, page: int, tma: bool) -> list[int]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mlra.kernels.triton_latent import _latent_decode_kernel, default_latent_config

    cfg = default_latent_config(1, w, 64, rows, page)
    bn = cfg.block_n
    types = {n: "*bf16" for n in ("q_lat_ptr", "q_rope_ptr", "cache_ptr")}
    types.update({n: "*i32" for n in ("bt_ptr", "seq_lens_ptr")})
    types.update({n: "*fp32" for n in ("o_ptr", "lse_ptr")}, qk_scale="fp32")
    if tma:
        types.update(lat_desc=f"tensordesc<bf16[{bn},{w}]>", rope_desc=f"tensordesc<bf16[{bn},64]>")
    else:
        types.update(lat_desc="*bf16", rope_desc="*bf16")
    consts = dict(NB=1, W=w, W_PAD=w, R=64, PAGE=page, BLOCK_M=cfg.block_m, BLOCK_N=bn,
                  SCALAR_PAGE=page % bn == 0, USE_TMA=tma, PDL=0, PF_TOKENS=0, W_LINES=2,
                  R_LINES=1, LINE=64)
    params = list(inspect.signature(_latent_decode_kernel.fn).parameters)
    signature = {p: "constexpr" if p in consts else types.get(p, "i32") for p in params}
    aligned = {p for p in params if types.get(p, "").startswith("*") or p.startswith("s_")
               or p in ("o0", "o1", "o2", "o3", "rope_off")}
    src = ASTSource(fn=_latent_decode_kernel, signature=signature,
                    constexprs={(params.index(k),): v for k, v in consts.items()},
                    attrs={(params.index(p),): [["tt.divisibility", 16]] for p in aligned})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    tiles = re.findall(rf"ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x{bn}x(?:{w}|64)xbf16",
                       compiled.asm["ttgir"])
    return [int(n) for n in tiles]


def main(out: str) -> int:
    result = {name: tile_buffers(rows, w, page, tma) for name, rows, w, page, tma in CASES}
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
