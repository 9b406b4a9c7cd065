"""The small per-layer kernels of a decode step around the attention kernel, one launch each:

- :func:`latent_decode_prepare_triton`: the latent family's cache row of each new token
  (per latent head RMSNorm, scale, RoPE key) written at its slot, the RoPE queries and the
  absorbed queries (``q_nope @ W_UK`` per latent head), from the two projection outputs;
- :func:`latent_up_output_triton`: ``W_UV`` per latent head and query head, summed over
  branches, scaled;
- :func:`gqa_decode_prepare_triton`: RoPE on q and k, the new k/v rows written at their slots;
- :func:`decode_slots_triton`: the new tokens' positions and cache rows.

Contracts: the references of the same names in :mod:`mlra.kernels.reference`. On Hopper they
launch with programmatic dependent launch (:func:`mlra.kernels._triton_common.pdl_mode`),
prefetching their slices of ``W_UK`` / ``W_UV`` into L2 before waiting for the previous kernel.
Import only after checking :func:`mlra.kernels.triton_available`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import (
    env_switch,
    launch_options,
    next_pow2,
    pdl_launch_next,
    pdl_mode,
    pdl_wait,
    prefetch_l2,
    trace_mark,
)
from mlra.kernels.kernel_trace import trace_slot

TWO_PI = tl.constexpr(6.283185307179586)

PRELOAD_ENV = "MLRA_STEP_PRELOAD"
"""Environment variable: ``0`` makes the one-token W_UV launch prefetch its weight slice into L2
before the PDL wait instead of loading it into registers (the default, measured 0.03-0.06 ms
faster per batch-1 step for MLA and 0.02-0.03 for MLRA-4 at 128K on the H200,
``benchmarks/e2e_decode/results/h200/preload``). For A/B runs. (The same for the query
preparation's W_UK slices measured no different, ``results/h200/latency``, and was removed.)"""


EARLY_NEXT_ENV = "MLRA_STEP_UP_EARLY_NEXT"
"""Environment variable: ``0`` makes the one-token W_UV launch let the next kernel (the output
projection) launch right after its own PDL wait instead of before it (the default: on the H200
a batch-1 MLRA-4 step at 8K 0.014 ms faster alone, 0.009 beside the resident projections' early
trigger, MLA and GQA even; ``benchmarks/e2e_decode/results/h200/products``). For A/B runs."""


def up_early_next() -> bool:
    """Whether the one-token W_UV launch lets the next launch start before its own wait
    (:data:`EARLY_NEXT_ENV`)."""
    return env_switch(EARLY_NEXT_ENV)


def preload_w_uv() -> bool:
    """Whether the one-token W_UV launch loads its weight slice before the PDL wait
    (:data:`PRELOAD_ENV`)."""
    return env_switch(PRELOAD_ENV)


@triton.jit
def _rope(src_ptr, pos, inv_ptr, R: tl.constexpr):
    """Rotate-half RoPE of the ``R`` values at ``src_ptr`` (fp32) at position ``pos``: the
    angles ``pos * inv_freq`` in float64 (exact for large positions, as the reference's tables),
    reduced to one turn in float64, then cos / sin in fp32."""
    j = tl.arange(0, R)
    half: tl.constexpr = R // 2
    angle = pos.to(tl.float64) * tl.load(inv_ptr + tl.where(j < half, j, j - half))
    turns = tl.floor(angle / TWO_PI + 0.5)
    angle = (angle - turns * TWO_PI).to(tl.float32)
    x = tl.load(src_ptr + j).to(tl.float32)
    partner = tl.load(src_ptr + tl.where(j < half, j + half, j - half)).to(tl.float32)
    rotated = tl.where(j < half, -partner, partner)
    return x * tl.cos(angle) + rotated * tl.sin(angle)


@triton.jit
def _latent_cache_row(m, c_ptr, pos_ptr, inv_ptr, kvn_ptr, pool_ptr, slot_ptr, kv_scale,
                      eps, stride_cm, stride_pool, L: tl.constexpr, L_PAD: tl.constexpr,
                      W: tl.constexpr, W_PAD: tl.constexpr, R: tl.constexpr):
    """The cache row of token ``m``: per latent head RMSNorm x weight x scale, the RoPE key.
    Every input is loaded before the first store, all latent heads as one tile: the compiler
    does not move a load above a store that may alias it, so a loop of load-normalise-store per
    head waited one memory latency per head (this program was the query preparation's last
    to finish, 3.8 us against 1.8 for the others: ``benchmarks/e2e_decode/results/h200/
    latency``)."""
    tl.static_assert(L_PAD >= L)
    pos = tl.load(pos_ptr + m)
    dst = pool_ptr + tl.load(slot_ptr + m).to(tl.int64) * stride_pool
    offs_l = tl.arange(0, L_PAD)
    offs = tl.arange(0, W_PAD)
    mask = (offs_l < L)[:, None] & (offs < W)[None, :]
    cols = offs_l[:, None] * W + offs[None, :]
    x = tl.load(c_ptr + m * stride_cm + cols, mask=mask, other=0.0)
    weight = tl.load(kvn_ptr + cols, mask=mask, other=0.0)
    k_rope = _rope(c_ptr + m * stride_cm + L * W, pos, inv_ptr, R)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / W + eps)
    normed = (xf * rstd[:, None]).to(x.dtype).to(tl.float32) * weight.to(tl.float32)
    y = normed.to(x.dtype).to(tl.float32) * kv_scale
    tl.store(dst + cols, y.to(pool_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + L * W + tl.arange(0, R), k_rope.to(pool_ptr.dtype.element_ty))


@triton.jit
def _w_uk_rows(w_ptr, pp, stride_wl, stride_ww, W: tl.constexpr, D: tl.constexpr,
               HG: tl.constexpr, G: tl.constexpr, NB: tl.constexpr, BW: tl.constexpr,
               WB: tl.constexpr):
    """Absorbed-query program ``pp`` (head ``pp // (NB * WB)``, branch, width block): the
    address of each of its ``BW`` W_UK rows (clamped into the weight) and which are real."""
    h = pp // (NB * WB)
    rows_w = (pp % WB) * BW + tl.arange(0, BW)
    rows = (w_ptr + ((pp // WB) % NB * G + h // HG) * stride_wl
            + tl.minimum(rows_w, W - 1) * stride_ww + (h % HG) * 2 * D)
    return rows, rows_w < W


@triton.jit
def _latent_prepare_kernel(
    q_ptr, c_ptr, pos_ptr, inv_ptr, kvn_ptr, w_ptr, pool_ptr, slot_ptr, qabs_ptr, qrope_ptr,
    M, kv_scale, eps, stride_qm, stride_cm, stride_wl, stride_ww, stride_pool,
    L: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, R: tl.constexpr, D: tl.constexpr,
    HG: tl.constexpr, G: tl.constexpr, NB: tl.constexpr, BW: tl.constexpr, WB: tl.constexpr,
    BM: tl.constexpr = 1, PDL: tl.constexpr = 0, LINE: tl.constexpr = 64,
    L_PAD: tl.constexpr = 1, trace_ptr=None,
):
    """Tokens ``[m0, m0 + BM)`` (one token, or a block whose absorbed queries are one matrix
    product per head, branch and width block). Axis 1: ``BM`` programs write one token's cache
    row each, ``BM x H`` its RoPE queries (one head each), the rest its absorbed queries."""
    trace_mark(trace_ptr, 0)
    m0 = tl.program_id(0) * BM
    p = tl.program_id(1)
    n_pre = BM * (1 + HG * G)  # the cache-row and RoPE-query programs
    if PDL > 1:  # this program's W_UK slice (no kernel writes weights) into L2 before the wait
        if p >= n_pre:
            w_rows, _ = _w_uk_rows(w_ptr, p - n_pre, stride_wl, stride_ww, W, D, HG, G, NB, BW,
                                   WB)
            prefetch_l2(w_rows[:, None] + (tl.arange(0, (D + LINE - 1) // LINE) * LINE)[None, :],
                        PDL)
    pdl_wait(PDL)
    trace_mark(trace_ptr, 1)
    pdl_launch_next(PDL)
    trace_mark(trace_ptr, 2)
    if p < BM:  # the cache row of token m0 + p
        m = m0 + p
        if m < M:
            _latent_cache_row(m, c_ptr, pos_ptr, inv_ptr, kvn_ptr, pool_ptr, slot_ptr,
                              kv_scale, eps, stride_cm, stride_pool, L, L_PAD, W, W_PAD, R)
    elif p < n_pre:  # the RoPE query of one head of one token
        m = m0 + (p - BM) % BM
        h = (p - BM) // BM
        if m < M:
            q_rope = _rope(q_ptr + m * stride_qm + h * (D + R) + D, tl.load(pos_ptr + m),
                           inv_ptr, R)
            tl.store(qrope_ptr + (m * HG * G + h) * R + tl.arange(0, R),
                     q_rope.to(qrope_ptr.dtype.element_ty))
    else:  # absorbed queries of head h for branch n, widths [wb * BW, (wb + 1) * BW)
        p = p - n_pre
        h = p // (NB * WB)
        n = (p // WB) % NB
        wb = p % WB
        g = h // HG
        i = h % HG
        offs_d = tl.arange(0, D)
        offs_w = wb * BW + tl.arange(0, BW)
        mask_w = offs_w < W
        w_rows, _ = _w_uk_rows(w_ptr, p, stride_wl, stride_ww, W, D, HG, G, NB, BW, WB)
        w_uk = tl.load(w_rows[:, None] + offs_d[None, :], mask=mask_w[:, None], other=0.0)
        if BM == 1:  # one token: a dot product per output
            q_nope = tl.load(q_ptr + m0 * stride_qm + h * (D + R) + offs_d).to(tl.float32)
            q_abs = tl.sum(w_uk.to(tl.float32) * q_nope[None, :], axis=1)
            row = ((m0 * NB + n) * G + g) * HG + i
            tl.store(qabs_ptr + row * W + offs_w, q_abs.to(qabs_ptr.dtype.element_ty),
                     mask=mask_w)
        else:  # a block of tokens: one matrix product
            offs_m = m0 + tl.arange(0, BM)
            mask_m = offs_m < M
            q_nope = tl.load(q_ptr + offs_m[:, None] * stride_qm + h * (D + R) + offs_d[None, :],
                             mask=mask_m[:, None], other=0.0)
            q_abs = tl.dot(q_nope.to(w_uk.dtype), tl.trans(w_uk))
            rows = ((offs_m * NB + n) * G + g) * HG + i
            tl.store(qabs_ptr + rows[:, None] * W + offs_w[None, :],
                     q_abs.to(qabs_ptr.dtype.element_ty),
                     mask=mask_m[:, None] & mask_w[None, :])
    trace_mark(trace_ptr, 3)


def _row_block(M: int) -> int:
    """Tokens per program of the prepare and W_UV kernels: one (dot products, the decode of a
    single sequence) or a block of 16-64 (one matrix product per head, so each weight slice
    is read once per block instead of once per token)."""
    return 1 if M < ROW_BLOCK_MIN else min(64, max(16, next_pow2(M)))


ROW_BLOCK_MIN = 4
"""From this many tokens per step the prepare and W_UV kernels take blocks of tokens."""


def latent_decode_prepare_triton(
    q: torch.Tensor, c_kv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
    kv_norm: torch.Tensor, kv_scale: float, w_up: torch.Tensor, pool: torch.Tensor,
    slots: torch.Tensor, branches: int, head_dim: int, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mlra.kernels.reference.latent_decode_prepare_ref`."""
    B, T = q.shape[:2]
    M = B * T
    L, W = kv_norm.shape
    R, D = 2 * inv_freq.shape[0], head_dim
    H = q.shape[-1] // (D + R)
    G = L // branches
    HG = H // G
    q2, c2 = q.reshape(M, -1), c_kv.reshape(M, -1)
    pos = positions.reshape(M).contiguous()
    q_abs = torch.empty(B, T, branches, G, HG, W, dtype=q.dtype, device=q.device)
    q_rope = torch.empty(B, T, G, HG, R, dtype=q.dtype, device=q.device)
    if M == 0:
        return q_abs, q_rope
    bm = _row_block(M)
    bw = min(128, next_pow2(W)) if bm == 1 else min(128, max(16, next_pow2(W)))
    wb = triton.cdiv(W, bw)
    pdl = pdl_mode(q2)
    grid = (triton.cdiv(M, bm), bm * (1 + H) + H * branches * wb)
    _latent_prepare_kernel[grid](
        q2, c2, pos, inv_freq, kv_norm, w_up, pool, slots, q_abs, q_rope,
        M, float(kv_scale), float(eps), q2.stride(0), c2.stride(0), w_up.stride(0),
        w_up.stride(1), pool.stride(1),
        L=L, W=W, W_PAD=next_pow2(W), R=R, D=D, HG=HG, G=G, NB=branches, BW=bw, WB=wb, BM=bm,
        PDL=pdl, LINE=128 // w_up.element_size(), L_PAD=next_pow2(L),
        trace_ptr=trace_slot("prepare", grid, q2),
        num_warps=4, **launch_options(pdl),
    )
    return q_abs, q_rope


@triton.jit
def _latent_up_kernel(
    z_ptr, w_ptr, o_ptr, M, out_scale, stride_wl, stride_ww, stride_om,
    W: tl.constexpr, D: tl.constexpr, HG: tl.constexpr, G: tl.constexpr, NB: tl.constexpr,
    BW: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr = 1, PDL: tl.constexpr = 0,
    LINE: tl.constexpr = 64, W_PAD: tl.constexpr = 1, PRELOAD: tl.constexpr = False,
    NB_PAD: tl.constexpr = 1, EARLY_NEXT: tl.constexpr = False, trace_ptr=None,
):
    """Head ``h`` of tokens ``[m0, m0 + BM)``, outputs ``[d0, d0 + BD)``: each branch's
    attention result times W_UV, summed (one token: elementwise products and one reduction;
    a block of tokens: one matrix product per branch). ``PRELOAD`` (one token): the program's
    whole W_UV slice, ``[branches, W, BD]``, loaded into registers before the PDL wait.
    ``EARLY_NEXT``: the next launch let start before the wait (else right after it)."""
    trace_mark(trace_ptr, 0)
    m0 = tl.program_id(0) * BM
    h = tl.program_id(1)
    offs_d = tl.program_id(2) * BD + tl.arange(0, BD)
    mask_d = offs_d < D
    g = h // HG
    i = h % HG
    if PRELOAD:  # the whole slice into registers before the wait (no kernel writes weights)
        offs_nb = tl.arange(0, NB_PAD)
        offs_wp = tl.arange(0, W_PAD)
        mask_nw = (offs_nb < NB)[:, None] & (offs_wp < W)[None, :]
        w_all = tl.load(w_ptr + ((offs_nb * G + g) * stride_wl + i * 2 * D + D)[:, None, None]
                        + offs_wp[None, :, None] * stride_ww + offs_d[None, None, :],
                        mask=mask_nw[:, :, None] & mask_d[None, None, :], other=0.0)
    elif PDL > 1:  # this program's W_UV slice into L2 before the wait
        for n in tl.static_range(NB):
            w_rows = w_ptr + (n * G + g) * stride_wl + i * 2 * D + D + tl.program_id(2) * BD
            offs_r = tl.arange(0, W_PAD)
            prefetch_l2(w_rows + tl.minimum(offs_r, W - 1)[:, None] * stride_ww
                        + (tl.arange(0, (BD + LINE - 1) // LINE) * LINE)[None, :], PDL)
    if EARLY_NEXT:
        pdl_launch_next(PDL)
    pdl_wait(PDL)
    trace_mark(trace_ptr, 1)
    if not EARLY_NEXT:
        pdl_launch_next(PDL)
    trace_mark(trace_ptr, 2)
    if PRELOAD:
        z_rows = ((m0 * NB + offs_nb) * G + g) * HG + i
        z = tl.load(z_ptr + z_rows[:, None] * W + offs_wp[None, :], mask=mask_nw, other=0.0)
        z = z.to(w_ptr.dtype.element_ty).to(tl.float32)  # the reference rounds z first
        acc = tl.sum(tl.sum(w_all.to(tl.float32) * z[:, :, None], axis=1), axis=0)
        tl.store(o_ptr + m0 * stride_om + h * D + offs_d,
                 (acc * out_scale).to(o_ptr.dtype.element_ty), mask=mask_d)
    elif BM == 1:
        # elementwise products summed over branches and chunks, one reduction over W at the end
        acc2d = tl.zeros([BW, BD], dtype=tl.float32)
        for n in tl.static_range(NB):
            z_row = z_ptr + (((m0 * NB + n) * G + g) * HG + i) * W
            w_l = w_ptr + (n * G + g) * stride_wl + i * 2 * D + D
            for w0 in tl.static_range(0, W, BW):
                offs_w = w0 + tl.arange(0, BW)
                mask_w = offs_w < W
                z = tl.load(z_row + offs_w, mask=mask_w, other=0.0)
                z = z.to(w_ptr.dtype.element_ty).to(tl.float32)  # the reference rounds z first
                w_uv = tl.load(w_l + offs_w[:, None] * stride_ww + offs_d[None, :],
                               mask=mask_w[:, None] & mask_d[None, :], other=0.0)
                acc2d += w_uv.to(tl.float32) * z[:, None]
        acc = tl.sum(acc2d, axis=0)
        tl.store(o_ptr + m0 * stride_om + h * D + offs_d,
                 (acc * out_scale).to(o_ptr.dtype.element_ty), mask=mask_d)
    else:
        offs_m = m0 + tl.arange(0, BM)
        mask_m = offs_m < M
        acc = tl.zeros([BM, BD], dtype=tl.float32)
        for n in tl.static_range(NB):
            rows = ((offs_m * NB + n) * G + g) * HG + i
            w_l = w_ptr + (n * G + g) * stride_wl + i * 2 * D + D
            for w0 in tl.static_range(0, W, BW):
                offs_w = w0 + tl.arange(0, BW)
                mask_w = offs_w < W
                z = tl.load(z_ptr + rows[:, None] * W + offs_w[None, :],
                            mask=mask_m[:, None] & mask_w[None, :], other=0.0)
                w_uv = tl.load(w_l + offs_w[:, None] * stride_ww + offs_d[None, :],
                               mask=mask_w[:, None] & mask_d[None, :], other=0.0)
                acc += tl.dot(z.to(w_ptr.dtype.element_ty), w_uv)
        tl.store(o_ptr + offs_m[:, None] * stride_om + h * D + offs_d[None, :],
                 (acc * out_scale).to(o_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_d[None, :])
    trace_mark(trace_ptr, 3)


def latent_up_output_triton(
    z: torch.Tensor, w_up: torch.Tensor, out_scale: float, head_dim: int
) -> torch.Tensor:
    """Triton implementation of :func:`mlra.kernels.reference.latent_up_output_ref`."""
    B, T, NB, G, HG, W = z.shape
    D, M = head_dim, B * T
    z = z.contiguous()
    out = torch.empty(B, T, G * HG * D, dtype=w_up.dtype, device=z.device)
    if M == 0:
        return out
    bm = _row_block(M)
    if bm == 1:  # many programs: at batch 1 there are only heads x D / bd of them
        bd, bw = min(16, D), min(128, next_pow2(W))
    else:
        bd, bw = min(64, max(16, next_pow2(D))), min(128, max(16, next_pow2(W)))
    o2 = out.view(M, -1)
    pdl = pdl_mode(z)
    preload = bm == 1 and preload_w_uv()
    grid = (triton.cdiv(M, bm), G * HG, triton.cdiv(D, bd))
    _latent_up_kernel[grid](
        z, w_up, o2, M, float(out_scale), w_up.stride(0), w_up.stride(1), o2.stride(0),
        W=W, D=D, HG=HG, G=G, NB=NB, BW=bw, BD=bd, BM=bm,
        PDL=pdl, W_PAD=next_pow2(W), LINE=128 // w_up.element_size(), PRELOAD=preload,
        NB_PAD=next_pow2(NB), EARLY_NEXT=bm == 1 and up_early_next(),
        trace_ptr=trace_slot("up", grid, z), num_warps=4,
        **launch_options(pdl),
    )
    return out


@triton.jit
def _gqa_prepare_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, inv_ptr, kp_ptr, vp_ptr, slot_ptr, qo_ptr,
    stride_qm, stride_km, stride_vm, stride_kp, stride_vp,
    H: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr = 0,
):
    pdl_wait(PDL)
    pdl_launch_next(PDL)
    m = tl.program_id(0)
    p = tl.program_id(1)
    pos = tl.load(pos_ptr + m)
    offs = tl.arange(0, D)
    if p < H:
        q = _rope(q_ptr + m * stride_qm + p * D, pos, inv_ptr, D)
        tl.store(qo_ptr + (m * H + p) * D + offs, q.to(qo_ptr.dtype.element_ty))
    else:
        j = p - H
        slot = tl.load(slot_ptr + m).to(tl.int64)
        k = _rope(k_ptr + m * stride_km + j * D, pos, inv_ptr, D)
        tl.store(kp_ptr + slot * stride_kp + j * D + offs, k.to(kp_ptr.dtype.element_ty))
        v = tl.load(v_ptr + m * stride_vm + j * D + offs)
        tl.store(vp_ptr + slot * stride_vp + j * D + offs, v.to(vp_ptr.dtype.element_ty))


def gqa_decode_prepare_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    inv_freq: torch.Tensor,
    k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, head_dim: int,
) -> torch.Tensor:
    """Triton implementation of :func:`mlra.kernels.reference.gqa_decode_prepare_ref`."""
    B, T = q.shape[:2]
    M, D = B * T, head_dim
    H, Hkv = q.shape[-1] // D, k.shape[-1] // D
    q2, k2, v2 = q.reshape(M, -1), k.reshape(M, -1), v.reshape(M, -1)
    pos = positions.reshape(M).contiguous()
    out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device)
    if M == 0:
        return out
    pdl = pdl_mode(q2)
    _gqa_prepare_kernel[(M, H + Hkv)](
        q2, k2, v2, pos, inv_freq, k_pool, v_pool, slots, out,
        q2.stride(0), k2.stride(0), v2.stride(0), k_pool.stride(1), v_pool.stride(1),
        H=H, D=D, PDL=pdl, num_warps=2, **launch_options(pdl),
    )
    return out


@triton.jit
def _slots_kernel(lens_ptr, bt_ptr, pos_ptr, slot_ptr, stride_bt, T, PAGE: tl.constexpr,
                  BLOCK_T: tl.constexpr, PDL: tl.constexpr = 0):
    pdl_wait(PDL)
    pdl_launch_next(PDL)
    b = tl.program_id(0)
    t = tl.arange(0, BLOCK_T)
    mask = t < T
    pos = tl.load(lens_ptr + b).to(tl.int64) - T + t
    page = tl.load(bt_ptr + b * stride_bt + pos // PAGE, mask=mask, other=0).to(tl.int64)
    tl.store(pos_ptr + b * T + t, pos, mask=mask)
    tl.store(slot_ptr + b * T + t, page * PAGE + pos % PAGE, mask=mask)


def decode_slots_triton(
    seq_lens: torch.Tensor, block_table: torch.Tensor, new_tokens: int, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mlra.kernels.reference.decode_slots_ref`."""
    B, T = seq_lens.shape[0], new_tokens
    positions = torch.empty(B, T, dtype=torch.int64, device=seq_lens.device)
    slots = torch.empty(B * T, dtype=torch.int64, device=seq_lens.device)
    if B and T:
        pdl = pdl_mode(seq_lens)
        _slots_kernel[(B,)](seq_lens, block_table, positions, slots, block_table.stride(0), T,
                            PAGE=page_size, BLOCK_T=next_pow2(T), PDL=pdl, num_warps=1,
                            **launch_options(pdl))
    return positions, slots
