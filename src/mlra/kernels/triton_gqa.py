"""Triton paged decode kernel for GQA/MQA (separate K and V caches, head dim up to 256).

One program handles one (sequence, KV head), a block of its query rows (``Tq x group`` rows:
every query head sharing that KV head, for every new token) and one split of the cached tokens,
so each KV head is read once per split for its whole group. Splits are merged by log-sum-exp.
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
    config_from_env,
    decode_outputs,
    device_sms,
    finish_splits,
    finished_empty,
    launch_options,
    load_cols,
    make_descriptor,
    next_pow2,
    num_splits_for,
    pdl_launch_next,
    pdl_mode,
    pdl_wait,
    prefetch_tokens_l2,
    read_bound,
    resolve_config,
    rows_as,
    split_prefetch_tokens,
    split_range,
    split_workspaces,
    tile_pages,
    tma_possible,
)


@dataclass(frozen=True)
class GQAKernelConfig(KernelConfig):
    """Launch parameters of the GQA kernel (``None`` fields are chosen by heuristics)."""


CONFIG_ENV = "MLRA_GQA_CONFIG"
"""Environment variable with launch parameters as JSON (fields of :class:`GQAKernelConfig`,
e.g. ``{"block_n": 64, "num_splits": 32}``) for every call without a ``config``: tuning runs of
whole decode steps."""


def env_config() -> GQAKernelConfig | None:
    """The launch parameters of :data:`CONFIG_ENV`, None when unset."""
    return config_from_env(CONFIG_ENV, GQAKernelConfig)


@triton.jit
def _gqa_tile(
    k_ptr, v_ptr, k_desc, v_desc, kvh, bt_row_ptr, n0, end, limit, s_kp, s_kr, s_vp, s_vr,
    qk_scale, q, m_i, l_i, acc,
    D: tl.constexpr, D_PAD: tl.constexpr, DV: tl.constexpr, DV_PAD: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, SCALAR_PAGE: tl.constexpr, MASK: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    if USE_TMA:  # the tile lies in one page: rows row0 .. row0 + BLOCK_N of the 2-D pools
        offs_n = n0 + tl.arange(0, BLOCK_N)
        row0 = tl.load(bt_row_ptr + n0 // PAGE) * PAGE + n0 % PAGE
        k = k_desc.load([row0, kvh * D])
        v = v_desc.load([row0, kvh * DV])
        if MASK:  # the cache may hold NaN past the sequence
            v = tl.where((offs_n < end)[:, None], v, 0.0)
    else:
        offs_n, page, slot = tile_pages(bt_row_ptr, n0, end, PAGE, BLOCK_N, SCALAR_PAGE, MASK)
        offs_d = tl.arange(0, D_PAD)
        offs_v = tl.arange(0, DV_PAD)
        k_rows = k_ptr + (page * s_kp + slot * s_kr)
        v_rows = v_ptr + (page * s_vp + slot * s_vr)
        k = load_cols(k_rows, offs_n, end, offs_d, D, D_PAD, MASK)
        v = load_cols(v_rows, offs_n, end, offs_v, DV, DV_PAD, MASK)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASK:
        s = tl.where(offs_n[None, :] < limit[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _gqa_decode_kernel(
    q_ptr, k_ptr, v_ptr, k_desc, v_desc, bt_ptr, seq_lens_ptr, o_ptr, lse_ptr,
    s_qb, s_qt, s_qh,
    s_kp, s_kr, s_kh, s_vp, s_vr, s_vh, s_btb,
    s_os, s_ob, s_ot, s_oh,
    s_ls, s_lb, s_lt,
    qk_scale, Hkv, G, Tq, n_splits, n_pages,
    D: tl.constexpr, D_PAD: tl.constexpr, DV: tl.constexpr, DV_PAD: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SCALAR_PAGE: tl.constexpr, USE_TMA: tl.constexpr,
    PDL: tl.constexpr = 0, PF_TOKENS: tl.constexpr = 0, K_LINES: tl.constexpr = 1,
    V_LINES: tl.constexpr = 1, LINE: tl.constexpr = 64,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // Hkv
    kvh = pid_bh % Hkv
    bt_row_ptr = bt_ptr + b * s_btb
    if PF_TOKENS > 0:  # older cache rows (no kernel of the step writes them) before the wait
        pf_len = tl.load(seq_lens_ptr + b)
        pf_start, pf_end, _ = split_range(pf_len, Tq, pid_s, n_splits, BLOCK_N)
        prefetch_tokens_l2(k_ptr + kvh * s_kh, bt_row_ptr, pf_start, pf_end, n_pages, s_kp,
                           s_kr, 0, PF_TOKENS, K_LINES, PAGE, LINE, PDL)
        prefetch_tokens_l2(v_ptr + kvh * s_vh, bt_row_ptr, pf_start, pf_end, n_pages, s_vp,
                           s_vr, 0, PF_TOKENS, V_LINES, PAGE, LINE, PDL)
    pdl_wait(PDL)
    seq_len = tl.load(seq_lens_ptr + b)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Tq * G
    t = offs_m // G
    h = kvh * G + offs_m % G
    limit = seq_len - Tq + t + 1

    start, end, full_end = split_range(seq_len, Tq, pid_s, n_splits, BLOCK_N)

    offs_d = tl.arange(0, D_PAD)
    offs_v = tl.arange(0, DV_PAD)
    q = tl.load(q_ptr + b * s_qb + t[:, None] * s_qt + h[:, None] * s_qh + offs_d[None, :],
                mask=m_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    k_head = k_ptr + kvh * s_kh
    v_head = v_ptr + kvh * s_vh
    for n0 in range(start, full_end, BLOCK_N):
        m_i, l_i, acc = _gqa_tile(k_head, v_head, k_desc, v_desc, kvh, bt_row_ptr, n0, end,
                                  limit, s_kp, s_kr, s_vp, s_vr, qk_scale, q, m_i, l_i, acc, D,
                                  D_PAD, DV, DV_PAD, PAGE, BLOCK_N, SCALAR_PAGE, False, USE_TMA)
    for n0 in range(full_end, end, BLOCK_N):
        m_i, l_i, acc = _gqa_tile(k_head, v_head, k_desc, v_desc, kvh, bt_row_ptr, n0, end,
                                  limit, s_kp, s_kr, s_vp, s_vr, qk_scale, q, m_i, l_i, acc, D,
                                  D_PAD, DV, DV_PAD, PAGE, BLOCK_N, SCALAR_PAGE, True, USE_TMA)
    pdl_launch_next(PDL)

    ok = l_i > 0
    inv = tl.where(ok, 1.0 / tl.where(ok, l_i, 1.0), 0.0)
    o_ptrs = (o_ptr + pid_s * s_os + b * s_ob + t[:, None] * s_ot + h[:, None] * s_oh
              + offs_v[None, :])
    tl.store(o_ptrs, acc * inv[:, None], mask=m_ok[:, None] & (offs_v < DV)[None, :])
    lse = tl.where(ok, (m_i + tl.math.log2(tl.where(ok, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(lse_ptr + pid_s * s_ls + b * s_lb + t * s_lt + h, lse, mask=m_ok)


#: cached tokens per resident program (two per multiprocessor) up to which the heuristic takes
#: 64-token tiles with two stages: a short, latency-bound read spread over more programs.
#: H200, GQA 2.9B batch-1 steps (ms, 64 x 2 stages against 128 x 3): 8K (~190 tokens per
#: program) 1.978 / 2.031, 16K (~370) 2.156 / 2.230, 32K (~750) 2.471 / 2.506; 128K (~3000)
#: 4.237 / 4.216-4.227, and 32 x 16K slower with 64-token tiles (12.72 / 12.15 ms, 3 stages),
#: so longer reads keep 128 (results/h200/gqa_attention)
SHORT_READ_TOKENS = 1024


def default_gqa_config(d: int, dv: int, rows: int, page: int,
                       tokens_per_slot: float | None = None) -> GQAKernelConfig:
    """Heuristic launch parameters (tuned on an H100, see benchmarks/decode/NOTES.md; short
    reads on an H200: :data:`SHORT_READ_TOKENS`). ``tokens_per_slot``: the cached tokens of
    every (sequence, KV head) over the resident program slots, before the query rows are
    split into blocks (None: long reads)."""
    block_m = min(64, max(16, next_pow2(rows)))
    if INTERPRET:
        return GQAKernelConfig(block_n=16, num_warps=4, num_stages=1, block_m=block_m)
    if next_pow2(d) + next_pow2(dv) >= 512:
        return GQAKernelConfig(block_n=64, num_warps=8, num_stages=2, block_m=block_m)
    if (tokens_per_slot is not None
            and tokens_per_slot * triton.cdiv(rows, block_m) <= SHORT_READ_TOKENS):
        return GQAKernelConfig(block_n=64, num_warps=4, num_stages=2, block_m=block_m)
    return GQAKernelConfig(block_n=128, num_warps=4, num_stages=3, block_m=block_m)


def paged_gqa_decode_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    num_splits: int | None = None,
    config: GQAKernelConfig | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    max_seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mlra.kernels.reference.paged_gqa_decode_ref`.

    Keyword-only extras as :func:`mlra.kernels.triton_latent.paged_latent_decode_triton`.
    """
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError("expected q [B,Tq,Hq,D], k_cache [P,page,Hkv,D], v_cache [P,page,Hkv,Dv]")
    B, Tq, Hq, D = q.shape
    _, page, Hkv, Dk = k_cache.shape
    Dv = v_cache.shape[-1]
    if Dk != D or tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
        raise ValueError(f"k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} do "
                         f"not match q {tuple(q.shape)}")
    if Hq % Hkv:
        raise ValueError(f"{Hq} query heads are not a multiple of {Hkv} KV heads")
    if page % 16:
        raise ValueError(f"page size must be a multiple of 16, got {page}")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("block_table and seq_lens must be int32")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("cache head vectors must be contiguous")
    out, lse = decode_outputs(out, lse, (B, Tq, Hq, Dv), q.device)
    if finished_empty(out, lse):
        return out, lse
    q = rows_as(q, k_cache)
    G = Hq // Hkv
    rows = Tq * G
    if config is None:
        config = env_config()
    longest = read_bound(max_seq_len, block_table, page)
    slots = 2 * device_sms(k_cache)  # resident programs, two per multiprocessor
    cfg = resolve_config(config, default_gqa_config(D, Dv, rows, page,
                                                    B * Hkv * longest / slots))
    m_blocks = triton.cdiv(rows, cfg.block_m)
    can_tma = (tma_possible(k_cache, cfg.block_n, (D,))
               and tma_possible(v_cache, cfg.block_n, (Dv,))
               and k_cache.stride(2) == D and v_cache.stride(2) == Dv)
    use_tma = can_tma if cfg.use_tma is None else cfg.use_tma
    if use_tma:
        if not can_tma:
            raise ValueError("use_tma needs pow2 head dims, page % block_n == 0, contiguous pools")
        n_rows = k_cache.shape[0] * page
        k_desc = make_descriptor(k_cache.as_strided((n_rows, Hkv * D), (k_cache.stride(1), 1)),
                                 [cfg.block_n, D])
        v_desc = make_descriptor(v_cache.as_strided((n_rows, Hkv * Dv), (v_cache.stride(1), 1)),
                                 [cfg.block_n, Dv])
    else:
        k_desc, v_desc = k_cache, v_cache
    num_splits = num_splits_for(num_splits, max_seq_len, block_table, page, B * Hkv * m_blocks,
                                cfg.block_n, k_cache, ctas_per_sm=2, configured=cfg.num_splits)
    o_ws, lse_ws = split_workspaces(num_splits, out, lse)
    grid = (m_blocks, num_splits, B * Hkv)
    pdl = pdl_mode(k_cache)
    es = k_cache.element_size()
    k_lines, v_lines = next_pow2(triton.cdiv(D * es, 128)), next_pow2(triton.cdiv(Dv * es, 128))
    pf_tokens = split_prefetch_tokens(pdl, max_seq_len, block_table, page, cfg.block_n,
                                      num_splits, grid[0] * grid[1] * grid[2],
                                      k_lines + v_lines, k_cache)
    _gqa_decode_kernel[grid](
        q, k_cache, v_cache, k_desc, v_desc, block_table, seq_lens, o_ws, lse_ws,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        o_ws.stride(0), o_ws.stride(1), o_ws.stride(2), o_ws.stride(3),
        lse_ws.stride(0), lse_ws.stride(1), lse_ws.stride(2),
        float(scale) * LOG2E, Hkv, G, Tq, num_splits, k_cache.shape[0],
        D=D, D_PAD=next_pow2(D), DV=Dv, DV_PAD=next_pow2(Dv), PAGE=page,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, SCALAR_PAGE=page % cfg.block_n == 0,
        USE_TMA=use_tma, PDL=pdl, PF_TOKENS=pf_tokens, K_LINES=k_lines, V_LINES=v_lines,
        LINE=128 // es,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(pdl),
    )
    finish_splits(o_ws, lse_ws, out, lse)
    return out, lse
