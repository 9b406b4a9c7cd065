"""Triton paged decode kernel over tensor-product factors (TPA), no per-head K or V formed.

Per cached token the cache holds ``a_k, a_v [H, R]`` and ``b_k, b_v [R, d]``. One program
handles one sequence, one block of query rows (``Tq x H`` rows: every head of every new token)
and one split of the cached tokens; each tile of ``BLOCK_N`` tokens reads its factors once for
all heads. With ``Q [rows, d]`` and, per rank ``r``, ``B_r [BLOCK_N, d]`` and the gathered
``A_r [rows, BLOCK_N]`` (``A_r[(t, h), s] = a[s, h, r]``):

    logits = scale * sum_r A_k,r * (Q @ B_k,r^T)    (R products [rows, d] x [d, BLOCK_N])
    out   += sum_r (P * A_v,r) @ B_v,r               (R products [rows, BLOCK_N] x [BLOCK_N, d])

so a token costs about ``4 R d`` FLOPs per row, against ``4 d (R + 1)`` for forming its K and V
and attending over them, and nothing per head is written or re-read. Online softmax in the log2
domain (fp32 statistics and accumulators), ``P * A_v`` rounded to the cache dtype for the product,
fp32 outputs; splits are merged by log-sum-exp (:func:`mlra.kernels._triton_common.merge_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import (
    INTERPRET,
    LOG2E,
    KernelConfig,
    decode_outputs,
    finish_splits,
    finished_empty,
    load_cols,
    next_pow2,
    num_splits_for,
    resolve_config,
    rows_as,
    split_range,
    split_workspaces,
    tile_pages,
)

MAX_RANK = 16  # ranks unrolled in the kernel (TPA uses 2)


@dataclass(frozen=True)
class TPAKernelConfig(KernelConfig):
    """Launch parameters of the TPA kernel (``None`` fields are chosen by heuristics)."""


@triton.jit
def _load_weights(a_rows, h, s_ah, r, offs_n, end, MASK: tl.constexpr):
    """``A_r [rows, BLOCK_N]``: factor weight of each row's head at each token (zeros for tokens
    at or past ``end`` when ``MASK``; the cache may hold NaN there)."""
    ptrs = a_rows[None, :] + h[:, None] * s_ah + r
    if MASK:
        return tl.load(ptrs, mask=(offs_n < end)[None, :], other=0.0).to(tl.float32)
    return tl.load(ptrs).to(tl.float32)


@triton.jit
def _tpa_tile(
    ak_ptr, bk_ptr, av_ptr, bv_ptr, bt_row_ptr, n0, end, limit, h,
    s_akp, s_akn, s_akh, s_akr, s_bkp, s_bkn, s_bkr,
    s_avp, s_avn, s_avh, s_avr, s_bvp, s_bvn, s_bvr,
    qk_scale, q, m_i, l_i, acc,
    R: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr, SCALAR_PAGE: tl.constexpr, MASK: tl.constexpr,
):
    offs_n, page, slot = tile_pages(bt_row_ptr, n0, end, PAGE, BLOCK_N, SCALAR_PAGE, MASK)
    offs_d = tl.arange(0, D_PAD)
    ak_rows = ak_ptr + (page * s_akp + slot * s_akn)
    bk_rows = bk_ptr + (page * s_bkp + slot * s_bkn)
    av_rows = av_ptr + (page * s_avp + slot * s_avn)
    bv_rows = bv_ptr + (page * s_bvp + slot * s_bvn)

    bk = load_cols(bk_rows, offs_n, end, offs_d, D, D_PAD, MASK)
    s = tl.dot(q, tl.trans(bk)) * _load_weights(ak_rows, h, s_akh, 0, offs_n, end, MASK)
    for r in tl.static_range(1, R):
        bk = load_cols(bk_rows + r * s_bkr, offs_n, end, offs_d, D, D_PAD, MASK)
        s += tl.dot(q, tl.trans(bk)) * _load_weights(ak_rows, h, s_akh, r * s_akr, offs_n, end,
                                                     MASK)
    s = s * qk_scale
    if MASK:
        s = tl.where(offs_n[None, :] < limit[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    for r in tl.static_range(R):
        bv = load_cols(bv_rows + r * s_bvr, offs_n, end, offs_d, D, D_PAD, MASK)
        av = _load_weights(av_rows, h, s_avh, r * s_avr, offs_n, end, MASK)
        acc = tl.dot((p * av).to(bv.dtype), bv, acc)
    return m_new, l_i, acc


@triton.jit
def _tpa_decode_kernel(
    q_ptr, ak_ptr, bk_ptr, av_ptr, bv_ptr, bt_ptr, seq_lens_ptr, o_ptr, lse_ptr,
    s_qb, s_qt, s_qh,
    s_akp, s_akn, s_akh, s_akr, s_bkp, s_bkn, s_bkr,
    s_avp, s_avn, s_avh, s_avr, s_bvp, s_bvn, s_bvr, s_btb,
    s_os, s_ob, s_ot, s_oh,
    s_ls, s_lb, s_lt,
    qk_scale, v_scale, H, Tq, n_splits,
    R: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALAR_PAGE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Tq * H
    t = offs_m // H
    h = offs_m % H  # a valid head for padding rows too (their weight loads stay in bounds)
    limit = seq_len - Tq + t + 1  # query row may see cached positions < limit

    start, end, full_end = split_range(seq_len, Tq, pid_s, n_splits, BLOCK_N)

    offs_d = tl.arange(0, D_PAD)
    q = tl.load(q_ptr + b * s_qb + t[:, None] * s_qt + h[:, None] * s_qh + offs_d[None, :],
                mask=m_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    bt_row_ptr = bt_ptr + b * s_btb
    for n0 in range(start, full_end, BLOCK_N):
        m_i, l_i, acc = _tpa_tile(
            ak_ptr, bk_ptr, av_ptr, bv_ptr, bt_row_ptr, n0, end, limit, h,
            s_akp, s_akn, s_akh, s_akr, s_bkp, s_bkn, s_bkr,
            s_avp, s_avn, s_avh, s_avr, s_bvp, s_bvn, s_bvr,
            qk_scale, q, m_i, l_i, acc, R, D, D_PAD, PAGE, BLOCK_N, SCALAR_PAGE, False)
    for n0 in range(full_end, end, BLOCK_N):
        m_i, l_i, acc = _tpa_tile(
            ak_ptr, bk_ptr, av_ptr, bv_ptr, bt_row_ptr, n0, end, limit, h,
            s_akp, s_akn, s_akh, s_akr, s_bkp, s_bkn, s_bkr,
            s_avp, s_avn, s_avh, s_avr, s_bvp, s_bvn, s_bvr,
            qk_scale, q, m_i, l_i, acc, R, D, D_PAD, PAGE, BLOCK_N, SCALAR_PAGE, True)

    ok = l_i > 0
    inv = tl.where(ok, v_scale / tl.where(ok, l_i, 1.0), 0.0)
    o_ptrs = (o_ptr + pid_s * s_os + b * s_ob + t[:, None] * s_ot + h[:, None] * s_oh
              + offs_d[None, :])
    tl.store(o_ptrs, acc * inv[:, None], mask=m_ok[:, None] & (offs_d < D)[None, :])
    lse = tl.where(ok, (m_i + tl.math.log2(tl.where(ok, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(lse_ptr + pid_s * s_ls + b * s_lb + t * s_lt + h, lse, mask=m_ok)


def default_tpa_config(d: int, rows: int, page: int) -> TPAKernelConfig:
    """Heuristic launch parameters: every head of a token in one program (the factors are read
    once), 64-token tiles."""
    block_m = min(64, max(16, next_pow2(rows)))
    if INTERPRET:
        return TPAKernelConfig(block_n=16, num_warps=4, num_stages=1, block_m=block_m)
    return TPAKernelConfig(block_n=64, num_warps=4, num_stages=2, block_m=block_m)


def _check_inputs(q, a_k, b_k, a_v, b_v, block_table, seq_lens) -> None:
    if q.dim() != 4 or any(x.dim() != 4 for x in (a_k, b_k, a_v, b_v)):
        raise ValueError("expected q [B,Tq,H,d], a_k/a_v [P,page,H,R], b_k/b_v [P,page,R,d]")
    B, _, H, D = q.shape
    P, page, Ha, R = a_k.shape
    if Ha != H or tuple(b_k.shape) != (P, page, R, D):
        raise ValueError(f"factors a_k {tuple(a_k.shape)} / b_k {tuple(b_k.shape)} do not match "
                         f"q {tuple(q.shape)}")
    if a_v.shape != a_k.shape or b_v.shape != b_k.shape:
        raise ValueError(f"value factors {tuple(a_v.shape)} / {tuple(b_v.shape)} differ in shape "
                         f"from the key factors {tuple(a_k.shape)} / {tuple(b_k.shape)}")
    if len({x.dtype for x in (a_k, b_k, a_v, b_v)}) != 1:
        raise ValueError("the four factor pools must share one dtype")
    if R < 1 or R > MAX_RANK:
        raise ValueError(f"rank must be in [1, {MAX_RANK}], got {R}")
    if page % 16:
        raise ValueError(f"page size must be a multiple of 16, got {page}")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("block_table and seq_lens must be int32")
    if block_table.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError("block_table and seq_lens need one row per sequence")
    if b_k.stride(-1) != 1 or b_v.stride(-1) != 1:
        raise ValueError("b_k / b_v rows must be contiguous")


def paged_tpa_decode_triton(
    q: torch.Tensor,
    a_k: torch.Tensor,
    b_k: torch.Tensor,
    a_v: torch.Tensor,
    b_v: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    value_scale: float = 1.0,
    *,
    num_splits: int | None = None,
    config: TPAKernelConfig | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    max_seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mlra.kernels.reference.paged_tpa_decode_ref`.

    Keyword-only extras as :func:`mlra.kernels.triton_latent.paged_latent_decode_triton`.
    """
    _check_inputs(q, a_k, b_k, a_v, b_v, block_table, seq_lens)
    B, Tq, H, D = q.shape
    page, R = a_k.shape[1], a_k.shape[3]
    out, lse = decode_outputs(out, lse, (B, Tq, H, D), q.device)
    if finished_empty(out, lse):
        return out, lse
    q = rows_as(q, b_k)
    rows = Tq * H
    cfg = resolve_config(config, default_tpa_config(D, rows, page))
    m_blocks = triton.cdiv(rows, cfg.block_m)
    num_splits = num_splits_for(num_splits, max_seq_len, block_table, page, B * m_blocks,
                                cfg.block_n, b_k, ctas_per_sm=2, configured=cfg.num_splits)
    o_ws, lse_ws = split_workspaces(num_splits, out, lse)
    grid = (m_blocks, num_splits, B)
    _tpa_decode_kernel[grid](
        q, a_k, b_k, a_v, b_v, block_table, seq_lens, o_ws, lse_ws,
        q.stride(0), q.stride(1), q.stride(2),
        *a_k.stride()[:4], *b_k.stride()[:3], *a_v.stride()[:4], *b_v.stride()[:3],
        block_table.stride(0),
        o_ws.stride(0), o_ws.stride(1), o_ws.stride(2), o_ws.stride(3),
        lse_ws.stride(0), lse_ws.stride(1), lse_ws.stride(2),
        float(scale) * LOG2E, float(value_scale), H, Tq, num_splits,
        R=R, D=D, D_PAD=next_pow2(max(D, 16)), PAGE=page, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, SCALAR_PAGE=page % cfg.block_n == 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    finish_splits(o_ws, lse_ws, out, lse)
    return out, lse
