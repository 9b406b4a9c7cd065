"""Compiles the Hopper (PDL) forms of the decode-step kernels ahead of time for sm_90 and
writes their PTX as JSON: ``python tests/pdl_ptx.py OUT.json`` (run by ``test_pdl.py`` in a
process without ``TRITON_INTERPRET``, which would replace the kernels by interpreted ones)."""

from __future__ import annotations

import inspect
import json
import re
import sys

_TRACED = []  # non-empty while a traced build runs: kernels get a trace_ptr (*i64)


def _compile_sm90(kernel, types: dict[str, str], consts: dict, aligned=(), **options):
    """PTX and metadata of ``kernel`` compiled for sm_90."""
    from mlra.kernels.aot import compile_sm90

    if _TRACED:
        types = {**types, "trace_ptr": "*i64"}
    compiled = compile_sm90(kernel, types, consts, aligned, **options)
    return compiled.asm["ptx"], compiled.metadata


def _ptr_types(names: str, dtype: str = "*bf16") -> dict[str, str]:
    return {n: dtype for n in names.split()}


def latent_types(descriptors: tuple[str, str] | None = None) -> dict[str, str]:
    """Argument types of ``_latent_decode_kernel``; ``descriptors``: the types of its two TMA
    descriptor arguments (default: plain pointers, the pointer-load form)."""
    types = _ptr_types("q_lat_ptr q_rope_ptr cache_ptr lat_desc rope_desc")
    if descriptors is not None:
        types.update(lat_desc=descriptors[0], rope_desc=descriptors[1])
    types.update(_ptr_types("bt_ptr seq_lens_ptr", "*i32"))
    types.update(_ptr_types("o_ptr lse_ptr", "*fp32"), qk_scale="fp32")
    return types


def latent_sm90(w: int, block_m: int, block_n: int, page: int, tma: bool, num_warps: int,
                num_stages: int):
    """``_latent_decode_kernel`` for one stream ``w`` wide compiled for sm_90 as the runtime
    specialises it (pointers and strides 16-byte divisible), PDL off."""
    from mlra.kernels.aot import compile_sm90
    from mlra.kernels.triton_latent import _latent_decode_kernel

    types = latent_types((f"tensordesc<bf16[{block_n},{w}]>", f"tensordesc<bf16[{block_n},64]>")
                         if tma else None)
    consts = dict(NB=1, W=w, W_PAD=w, R=64, PAGE=page, BLOCK_M=block_m, BLOCK_N=block_n,
                  SCALAR_PAGE=page % block_n == 0, USE_TMA=tma, PDL=0, PF_TOKENS=0, W_LINES=2,
                  R_LINES=1, LINE=64)
    params = inspect.signature(_latent_decode_kernel.fn).parameters
    aligned = [p for p in params if types.get(p, "").startswith("*") or p.startswith("s_")
               or p in ("o0", "o1", "o2", "o3", "rope_off")]
    return compile_sm90(_latent_decode_kernel, types, consts, aligned, num_warps=num_warps,
                        num_stages=num_stages)


def tile_buffers(ttgir: str, block_n: int, widths: str) -> list[tuple[int, int]]:
    """(buffers, width) of every shared-memory allocation of ``block_n``-row tiles whose width
    matches the regex ``widths``: the pipeline depth each tile got."""
    return [(int(n), int(w)) for n, w in re.findall(
        rf"ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x{block_n}x({widths})xbf16", ttgir)]


def skinny_types() -> dict[str, str]:
    """Argument types of ``_skinny_kernel``."""
    types = _ptr_types("x_ptr g_ptr res_ptr w1_ptr w2_ptr w3_ptr o1_ptr o2_ptr o3_ptr")
    types.update(ws_ptr="*fp32", cnt_ptr="*i32", eps="fp32", in_scale="fp32")
    return types


def _skinny(pdl: int, pf_lines: int, swiglu: bool, early_next: bool = False):
    from mlra.kernels.triton_skinny import _skinny_kernel

    types = skinny_types()
    consts = dict(NUM_W=1, SWIGLU=swiglu, HAS_NORM=True, HAS_RES=not swiglu, SPLIT_K=2,
                  K_SPLIT=1536, NUM_STAGES=3, BLOCK_M=1, BLOCK_N=16, BLOCK_K=256, ALIGNED=True,
                  PDL=pdl, PF_LINES=pf_lines, LINE=64, EARLY_NEXT=early_next)
    return _compile_sm90(_skinny_kernel, types, consts, num_warps=4, launch_pdl=pdl > 0)


def _latent(pdl: int, pf_tokens: int):
    from mlra.kernels.triton_latent import _latent_decode_kernel

    types = latent_types()
    consts = dict(NB=1, W=128, W_PAD=128, R=64, PAGE=64, BLOCK_M=32, BLOCK_N=64,
                  SCALAR_PAGE=True, USE_TMA=False, PDL=pdl, PF_TOKENS=pf_tokens, W_LINES=2,
                  R_LINES=1, LINE=64)
    return _compile_sm90(_latent_decode_kernel, types, consts, num_warps=4,
                         launch_pdl=pdl > 0)


def _small(kernel: str):
    from mlra.kernels import _triton_common as common
    from mlra.kernels import triton_step as step

    rows = 16 if kernel.endswith("_rows") else 1  # a block of tokens: the matrix-product path
    kernel = kernel.removesuffix("_rows")
    early = kernel.endswith("_early")  # the next launch let start before the wait
    kernel = kernel.removesuffix("_early")
    preload = kernel.endswith("_preload")  # the weight slice into registers before the wait
    kernel = kernel.removesuffix("_preload")
    if kernel == "prepare":
        fn = step._latent_prepare_kernel
        types = _ptr_types("q_ptr c_ptr kvn_ptr w_ptr pool_ptr qabs_ptr qrope_ptr")
        types.update(_ptr_types("pos_ptr slot_ptr", "*i64"), inv_ptr="*fp32",
                     kv_scale="fp32", eps="fp32")
        consts = dict(L=4, W=128, W_PAD=128, R=64, D=128, HG=24, G=1, NB=4, BW=128, WB=1,
                      BM=rows, PDL=2, LINE=64, L_PAD=4)
    elif kernel == "up":
        fn = step._latent_up_kernel
        types = _ptr_types("w_ptr o_ptr")
        types.update(z_ptr="*fp32", out_scale="fp32")
        consts = dict(W=128, D=128, HG=24, G=1, NB=4, BW=64, BD=32, BM=rows, PDL=2, LINE=64,
                      W_PAD=128, PRELOAD=preload, NB_PAD=4, EARLY_NEXT=early)
    elif kernel == "merge":
        fn = common._merge_kernel
        types = _ptr_types("o_ws_ptr lse_ws_ptr out_ptr lse_ptr", "*fp32")
        consts = dict(D=128, BLOCK_D=128, BLOCK_S=64, PDL=2)
    elif kernel == "gqa_prepare":
        fn = step._gqa_prepare_kernel
        types = _ptr_types("q_ptr k_ptr v_ptr kp_ptr vp_ptr qo_ptr")
        types.update(_ptr_types("pos_ptr slot_ptr", "*i64"), inv_ptr="*fp32")
        consts = dict(H=8, D=128, PDL=2)
    else:
        fn = step._slots_kernel
        types = _ptr_types("lens_ptr bt_ptr", "*i32")
        types.update(_ptr_types("pos_ptr slot_ptr", "*i64"))
        consts = dict(PAGE=16, BLOCK_T=4, PDL=2)
    return _compile_sm90(fn, types, consts, num_warps=4, launch_pdl=True)


def _gqa(pdl: int, pf_tokens: int):
    from mlra.kernels.triton_gqa import _gqa_decode_kernel

    types = _ptr_types("q_ptr k_ptr v_ptr k_desc v_desc")
    types.update(_ptr_types("bt_ptr seq_lens_ptr", "*i32"))
    types.update(_ptr_types("o_ptr lse_ptr", "*fp32"), qk_scale="fp32")
    consts = dict(D=128, D_PAD=128, DV=128, DV_PAD=128, PAGE=64, BLOCK_M=16, BLOCK_N=128,
                  SCALAR_PAGE=False, USE_TMA=False, PDL=pdl, PF_TOKENS=pf_tokens, K_LINES=2,
                  V_LINES=2, LINE=64)
    return _compile_sm90(_gqa_decode_kernel, types, consts, num_warps=4, launch_pdl=pdl > 0)


def _mlp(next_left: int = 0, tail: int = 0, aligned: bool = False):
    """The one-launch MLP; ``aligned``: pointers and strides 16-byte aligned, as at run time
    (its loops then pipelined: asynchronous copies)."""
    from mlra.kernels.triton_mlp import _mlp_kernel

    types = _ptr_types("x_ptr g_ptr res_ptr wg_ptr wu_ptr wd_ptr out_ptr")
    types.update(ws_ptr="*fp32", cnt_ptr="*i64", eps="fp32")
    consts = dict(D_PAD=4096, BLOCK_H=2, COLS=32, P_PAD=256, PHASE=0, HAS_RES=True,
                  NUM_STAGES=4, ALIGNED=True, PDL=2, PF_ROWS=2, LINE=64, NEXT_LEFT=next_left)
    if tail:
        types.update(rank_ptr="*i64")
        consts.update(TAIL=1)
    return _compile_sm90(_mlp_kernel, types, consts, num_warps=4, launch_pdl=True,
                         aligned=[*types, "s_g", "s_u", "s_d"] if aligned else ())


BUILDS = {
    "mlp_pdl2": _mlp,
    "mlp_pdl2_next4": lambda: _mlp(next_left=4),
    "mlp_pdl2_aligned": lambda: _mlp(aligned=True),
    "mlp_pdl2_aligned_tail": lambda: _mlp(tail=1, aligned=True),
    "skinny_swiglu_pdl2": lambda: _skinny(2, 16, True),
    "skinny_plain_pdl0": lambda: _skinny(0, 0, False),
    "skinny_pdl1": lambda: _skinny(1, 16, False),
    "skinny_early_pdl2": lambda: _skinny(2, 16, False, early_next=True),
    "latent_pdl2": lambda: _latent(2, 64),
    "latent_pdl1": lambda: _latent(1, 0),
    "gqa_pdl2": lambda: _gqa(2, 64),
    **{name: (lambda name=name: _small(name))
       for name in ("prepare", "up", "prepare_rows", "up_rows", "merge", "gqa_prepare",
                    "slots", "up_preload", "up_preload_early")},
}


def _traced(build):
    """``build`` with the kernel's ``trace_ptr`` given (a :class:`mlra.kernels.kernel_trace.
    KernelTrace` active): the timer marks compiled in."""
    def run():
        _TRACED.append(True)
        try:
            return build()
        finally:
            _TRACED.pop()
    return run


BUILDS.update({f"{name}_traced": _traced(BUILDS[name]) for name in (
    "mlp_pdl2", "skinny_swiglu_pdl2", "latent_pdl2", "prepare", "up", "merge")})


def main(out: str) -> int:
    result = {}
    for name, build in BUILDS.items():
        ptx, meta = build()
        result[name] = {"ptx": ptx, "launch_pdl": bool(meta.launch_pdl)}
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
