"""Triton paged decode kernel for the latent family (MLA, GLA, MLRA), absorbed form.

One program handles one sequence, one block of query rows (``Tq x Hq`` rows: every query head
of every new token) and one split of the cached tokens. Per tile of ``BLOCK_N`` cached tokens it
loads the shared RoPE keys once, computes ``q_rope . k_rope`` once, and then, for each of the
``NB`` latent streams, ``q_latent . latent`` + that RoPE term, an online softmax, and ``P @
latent`` -- so a single launch serves MLRA-4 (NB=4) on one GPU while reading the RoPE keys once
per token instead of once per branch. Splits are merged by log-sum-exp
(:func:`mlra.kernels._triton_common.merge_splits`).

Numerics: bf16 (or fp16) operands, fp32 accumulation and softmax statistics (log2 domain),
probabilities rounded to the cache dtype for the ``P @ V`` product, fp32 outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import (
    INTERPRET,
    LOG2E,
    KernelConfig,
    block_shared_memory,
    config_from_env,
    decode_outputs,
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
    resolve_config,
    rows_as,
    split_prefetch_tokens,
    split_range,
    split_workspaces,
    tile_pages,
    tma_possible,
    trace_mark,
)
from mlra.kernels.kernel_trace import trace_slot

MAX_STREAMS = 4  # streams per launch; more are processed in groups of four


@dataclass(frozen=True)
class LatentKernelConfig(KernelConfig):
    """Launch parameters of the latent kernel (``None`` fields are chosen by heuristics)."""

    #: latent streams per program (a divisor of NB); fewer than NB runs the streams of one tile
    #: range in adjacent programs that share the RoPE keys through L2
    streams_per_program: int | None = None


@triton.jit
def _stream_update(q, lat, s_rope, m_i, l_i, acc, offs_n, limit, qk_scale, MASK: tl.constexpr):
    """One online-softmax step of one latent stream over one tile."""
    s = tl.dot(q, tl.trans(lat), s_rope) * qk_scale
    if MASK:
        s = tl.where(offs_n[None, :] < limit[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(lat.dtype), lat)
    return m_new, l_i, acc


@triton.jit
def _tma_tile(desc, row0, col, offs_n, end, MASK: tl.constexpr):
    """A [BLOCK_N, C] tile by TMA; rows at or past ``end`` zeroed in masked tiles (the cache
    may hold NaN there)."""
    x = desc.load([row0, col])
    if MASK:
        x = tl.where((offs_n < end)[:, None], x, 0.0)
    return x


@triton.jit
def _latent_tile(
    cache_ptr, lat_desc, rope_desc, bt_row_ptr, n0, end, limit, s_cp, s_cr,
    off0, off1, off2, off3, rope_off, qk_scale,
    qr, q0, q1, q2, q3,
    m0, l0, a0, m1, l1, a1, m2, l2, a2, m3, l3, a3,
    NB: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, R: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, SCALAR_PAGE: tl.constexpr, MASK: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    if USE_TMA:  # the tile lies in one page: rows row0 .. row0 + BLOCK_N of the 2-D pool
        offs_n = n0 + tl.arange(0, BLOCK_N)
        row0 = tl.load(bt_row_ptr + n0 // PAGE) * PAGE + n0 % PAGE
        kr = rope_desc.load([row0, rope_off])
        s_rope = tl.dot(qr, tl.trans(kr))
        lat = _tma_tile(lat_desc, row0, off0, offs_n, end, MASK)
    else:
        offs_n, page, slot = tile_pages(bt_row_ptr, n0, end, PAGE, BLOCK_N, SCALAR_PAGE, MASK)
        rows = cache_ptr + (page * s_cp + slot * s_cr)
        offs_w = tl.arange(0, W_PAD)
        kr = load_cols(rows + rope_off, offs_n, end, tl.arange(0, R), R, R, MASK)
        s_rope = tl.dot(qr, tl.trans(kr))
        lat = load_cols(rows + off0, offs_n, end, offs_w, W, W_PAD, MASK)
    m0, l0, a0 = _stream_update(q0, lat, s_rope, m0, l0, a0, offs_n, limit, qk_scale, MASK)
    if NB > 1:
        if USE_TMA:
            lat = _tma_tile(lat_desc, row0, off1, offs_n, end, MASK)
        else:
            lat = load_cols(rows + off1, offs_n, end, offs_w, W, W_PAD, MASK)
        m1, l1, a1 = _stream_update(q1, lat, s_rope, m1, l1, a1, offs_n, limit, qk_scale, MASK)
    if NB > 2:
        if USE_TMA:
            lat = _tma_tile(lat_desc, row0, off2, offs_n, end, MASK)
        else:
            lat = load_cols(rows + off2, offs_n, end, offs_w, W, W_PAD, MASK)
        m2, l2, a2 = _stream_update(q2, lat, s_rope, m2, l2, a2, offs_n, limit, qk_scale, MASK)
    if NB > 3:
        if USE_TMA:
            lat = _tma_tile(lat_desc, row0, off3, offs_n, end, MASK)
        else:
            lat = load_cols(rows + off3, offs_n, end, offs_w, W, W_PAD, MASK)
        m3, l3, a3 = _stream_update(q3, lat, s_rope, m3, l3, a3, offs_n, limit, qk_scale, MASK)
    return m0, l0, a0, m1, l1, a1, m2, l2, a2, m3, l3, a3


@triton.jit
def _store_stream(o_ptrs, lse_ptrs, m_i, l_i, acc, mask_o, mask_m):
    ok = l_i > 0
    inv = tl.where(ok, 1.0 / tl.where(ok, l_i, 1.0), 0.0)
    tl.store(o_ptrs, acc * inv[:, None], mask=mask_o)
    lse = tl.where(ok, (m_i + tl.math.log2(tl.where(ok, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(lse_ptrs, lse, mask=mask_m)


@triton.jit
def _pick(i, a, b, c, d):
    return tl.where(i == 0, a, tl.where(i == 1, b, tl.where(i == 2, c, d)))


@triton.jit
def _latent_decode_kernel(
    q_lat_ptr, q_rope_ptr, cache_ptr, lat_desc, rope_desc, bt_ptr, seq_lens_ptr, o_ptr, lse_ptr,
    s_qb, s_qt, s_qj, s_qh,
    s_rb, s_rt, s_rh,
    s_cp, s_cr, s_btb,
    s_os, s_ob, s_ot, s_oj, s_oh,
    s_ls, s_lb, s_lt, s_lj,
    o0, o1, o2, o3, rope_off,
    qk_scale, Hq, Tq, n_splits, n_groups, n_pages,
    NB: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, R: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SCALAR_PAGE: tl.constexpr, USE_TMA: tl.constexpr,
    PDL: tl.constexpr = 0, PF_TOKENS: tl.constexpr = 0, W_LINES: tl.constexpr = 1,
    R_LINES: tl.constexpr = 1, LINE: tl.constexpr = 64, trace_ptr=None,
):
    trace_mark(trace_ptr, 0)
    # axis 0 = (row block, stream group), stream group fastest: the groups of one tile range run
    # side by side, so the RoPE keys they share come from L2 after the first read
    grp = tl.program_id(0) % n_groups
    pid_m = tl.program_id(0) // n_groups
    pid_s = tl.program_id(1)
    b = tl.program_id(2)
    bt_row_ptr = bt_ptr + b * s_btb
    j0 = grp * NB  # first stream of this program
    off0 = _pick(j0, o0, o1, o2, o3)
    off1 = _pick(j0 + 1, o0, o1, o2, o3)
    off2 = _pick(j0 + 2, o0, o1, o2, o3)
    off3 = _pick(j0 + 3, o0, o1, o2, o3)
    if PF_TOKENS > 0:
        # the older cache rows are written by no kernel of this step (the previous kernel
        # writes only the new tokens' rows): prefetch this split's first tiles before the wait
        # (from the lengths and block table staged before the step; a stale value only makes
        # a useless hint)
        pf_len = tl.load(seq_lens_ptr + b)
        pf_start, pf_end, _ = split_range(pf_len, Tq, pid_s, n_splits, BLOCK_N)
        prefetch_tokens_l2(cache_ptr, bt_row_ptr, pf_start, pf_end, n_pages, s_cp, s_cr, rope_off,
                         PF_TOKENS, R_LINES, PAGE, LINE, PDL)
        for j in tl.static_range(NB):
            prefetch_tokens_l2(cache_ptr, bt_row_ptr, pf_start, pf_end, n_pages, s_cp, s_cr,
                             _pick(j, off0, off1, off2, off3), PF_TOKENS, W_LINES, PAGE, LINE,
                             PDL)
    pdl_wait(PDL)
    trace_mark(trace_ptr, 1)
    seq_len = tl.load(seq_lens_ptr + b)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < Tq * Hq
    t = offs_m // Hq
    h = offs_m % Hq
    limit = seq_len - Tq + t + 1  # query row may see cached positions < limit

    start, end, full_end = split_range(seq_len, Tq, pid_s, n_splits, BLOCK_N)

    offs_w = tl.arange(0, W_PAD)
    offs_r = tl.arange(0, R)
    q_mask = m_ok[:, None] & (offs_w < W)[None, :]
    q_ptrs = (q_lat_ptr + b * s_qb + j0 * s_qj + t[:, None] * s_qt + h[:, None] * s_qh
              + offs_w[None, :])
    qr = tl.load(q_rope_ptr + b * s_rb + t[:, None] * s_rt + h[:, None] * s_rh + offs_r[None, :],
                 mask=m_ok[:, None], other=0.0)
    q0 = tl.load(q_ptrs, mask=q_mask, other=0.0)
    q1 = q0
    q2 = q0
    q3 = q0
    if NB > 1:
        q1 = tl.load(q_ptrs + s_qj, mask=q_mask, other=0.0)
    if NB > 2:
        q2 = tl.load(q_ptrs + 2 * s_qj, mask=q_mask, other=0.0)
    if NB > 3:
        q3 = tl.load(q_ptrs + 3 * s_qj, mask=q_mask, other=0.0)

    m0 = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l0 = tl.zeros([BLOCK_M], tl.float32)
    a0 = tl.zeros([BLOCK_M, W_PAD], tl.float32)
    m1 = m0
    l1 = l0
    a1 = a0
    m2 = m0
    l2 = l0
    a2 = a0
    m3 = m0
    l3 = l0
    a3 = a0
    for n0 in range(start, full_end, BLOCK_N):
        m0, l0, a0, m1, l1, a1, m2, l2, a2, m3, l3, a3 = _latent_tile(
            cache_ptr, lat_desc, rope_desc, bt_row_ptr, n0, end, limit, s_cp, s_cr,
            off0, off1, off2, off3, rope_off, qk_scale, qr, q0, q1, q2, q3,
            m0, l0, a0, m1, l1, a1, m2, l2, a2, m3, l3, a3,
            NB, W, W_PAD, R, PAGE, BLOCK_N, SCALAR_PAGE, False, USE_TMA)
    for n0 in range(full_end, end, BLOCK_N):
        m0, l0, a0, m1, l1, a1, m2, l2, a2, m3, l3, a3 = _latent_tile(
            cache_ptr, lat_desc, rope_desc, bt_row_ptr, n0, end, limit, s_cp, s_cr,
            off0, off1, off2, off3, rope_off, qk_scale, qr, q0, q1, q2, q3,
            m0, l0, a0, m1, l1, a1, m2, l2, a2, m3, l3, a3,
            NB, W, W_PAD, R, PAGE, BLOCK_N, SCALAR_PAGE, True, USE_TMA)
    pdl_launch_next(PDL)
    trace_mark(trace_ptr, 2)

    o_ptrs = (o_ptr + pid_s * s_os + b * s_ob + j0 * s_oj + t[:, None] * s_ot
              + h[:, None] * s_oh + offs_w[None, :])
    lse_ptrs = lse_ptr + pid_s * s_ls + b * s_lb + j0 * s_lj + t * s_lt + h
    _store_stream(o_ptrs, lse_ptrs, m0, l0, a0, q_mask, m_ok)
    if NB > 1:
        _store_stream(o_ptrs + s_oj, lse_ptrs + s_lj, m1, l1, a1, q_mask, m_ok)
    if NB > 2:
        _store_stream(o_ptrs + 2 * s_oj, lse_ptrs + 2 * s_lj, m2, l2, a2, q_mask, m_ok)
    if NB > 3:
        _store_stream(o_ptrs + 3 * s_oj, lse_ptrs + 3 * s_lj, m3, l3, a3, q_mask, m_ok)
    trace_mark(trace_ptr, 3)


#: shared memory per block from which 256-wide streams get five stages: their tiles need
#: 164,864 bytes on sm_90 (``results/h200/next_2026-12-03/w256``); measured only on Hopper
#: (227 KB), so GPUs with less (an A100's 163 KB, consumer parts) keep three stages
LARGE_SMEM_BYTES = 200 * 1024


CONFIG_ENV = "MLRA_LATENT_CONFIG"
"""Environment variable with launch parameters as JSON (fields of :class:`LatentKernelConfig`,
e.g. ``{"block_m": 32, "num_stages": 3}``) for every call without a ``config``: tuning runs of
whole decode steps."""


def env_config() -> LatentKernelConfig | None:
    """The launch parameters of :data:`CONFIG_ENV`, None when unset."""
    return config_from_env(CONFIG_ENV, LatentKernelConfig)


def default_latent_config(nb: int, w: int, r: int, rows: int, page: int,
                          large_smem: bool = True) -> LatentKernelConfig:
    """Launch parameters tuned on an H100 and an H200 (benchmarks/decode/NOTES.md).

    Each program runs one latent stream (``streams_per_program=1``): the streams of a tile range
    run in adjacent programs of the same launch and share the RoPE keys through L2, which
    measured faster than one program holding all four accumulators (register spills).

    Streams up to 128 wide run 64-row tiles (``wgmma``, however few the query rows) with five
    pipeline stages: the tile address comes from the block table, and Triton 3.6 then gives
    the cache tiles a single shared-memory buffer below five stages (a 16- or 32-row tile) or
    two (a 64-row tile), so each tile's load waited for the previous tile's products. Five
    stages give two or three buffers: 1.7x at 1M tokens on the H200
    (``benchmarks/decode/results/h200/stages``). Streams up to 256 wide too where a block has
    Hopper's shared memory (``large_smem``, see :data:`LARGE_SMEM_BYTES`): 1.1-1.3x over three
    stages at 1M and 32-128 x 16K on the H200 (``results/h200/next_2026-12-03``).
    """
    block_m = min(64, max(16, next_pow2(rows)))
    if INTERPRET:
        return LatentKernelConfig(block_n=16, num_warps=4, num_stages=1, block_m=block_m,
                                  streams_per_program=1)
    if next_pow2(w) + r >= 512:  # MLA: a 64 x 512 fp32 accumulator needs two warpgroups
        return LatentKernelConfig(block_n=64, num_warps=8, num_stages=2, block_m=block_m,
                                  streams_per_program=1)
    if next_pow2(w) <= 128 or (next_pow2(w) <= 256 and large_smem):
        return LatentKernelConfig(block_n=64, num_warps=4, num_stages=5, block_m=64,
                                  streams_per_program=1)
    return LatentKernelConfig(block_n=64, num_warps=4, num_stages=3, block_m=block_m,
                              streams_per_program=1)


def check_latent_inputs(q_latent, q_rope, cache, block_table, seq_lens, latent_offsets,
                        rope_offset) -> None:
    """Refuse inputs of a latent decode call that break its contract, saying what is wrong."""
    if q_latent.dim() != 5 or q_rope.dim() != 4 or cache.dim() != 3:
        raise ValueError("expected q_latent [B,Tq,NB,Hq,W], q_rope [B,Tq,Hq,R], cache [P,page,row]")
    B, Tq, NB, Hq, W = q_latent.shape
    R = q_rope.shape[-1]
    if tuple(q_rope.shape[:3]) != (B, Tq, Hq):
        raise ValueError(f"q_rope {tuple(q_rope.shape)} does not match q_latent {q_latent.shape}")
    if len(latent_offsets) != NB:
        raise ValueError(f"latent_offsets has {len(latent_offsets)} entries for {NB} streams")
    row = cache.shape[2]
    for off in latent_offsets:
        if off < 0 or off + W > row:
            raise ValueError(f"latent offset {off} + width {W} exceeds the cache row ({row})")
    if rope_offset < 0 or rope_offset + R > row:
        raise ValueError(f"rope offset {rope_offset} + {R} exceeds the cache row ({row})")
    if R & (R - 1) or R < 16:
        raise ValueError(f"rope width must be a power of two >= 16, got {R}")
    if cache.shape[1] % 16:
        raise ValueError(f"page size must be a multiple of 16, got {cache.shape[1]}")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("block_table and seq_lens must be int32")
    if block_table.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError("block_table and seq_lens need one row per sequence")


def in_stream_groups(decode, q_latent, q_rope, cache, block_table, seq_lens, latent_offsets,
                     rope_offset, scale, out, lse, **extras) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode`` (a latent decode implementation) over groups of :data:`MAX_STREAMS`
    streams, written into ``out`` / ``lse``."""
    nb = q_latent.shape[2]
    for g in range(0, nb, MAX_STREAMS):
        sl = slice(g, min(nb, g + MAX_STREAMS))
        o_g, l_g = decode(q_latent[:, :, sl], q_rope, cache, block_table, seq_lens,
                          list(latent_offsets)[sl], rope_offset, scale, **extras)
        out[:, :, sl] = o_g
        lse[:, :, sl] = l_g
    return out, lse


def paged_latent_decode_triton(
    q_latent: torch.Tensor,
    q_rope: torch.Tensor,
    cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    latent_offsets: Sequence[int],
    rope_offset: int,
    scale: float,
    *,
    num_splits: int | None = None,
    config: LatentKernelConfig | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    max_seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mlra.kernels.reference.paged_latent_decode_ref`.

    Keyword-only extras: ``num_splits`` (split-KV factor; default from a wave model),
    ``config`` (block sizes, warps, stages), ``out``/``lse`` (preallocated contiguous fp32
    outputs) and ``max_seq_len`` (an upper bound on ``seq_lens`` for the split heuristic;
    default: the block table's capacity, so the call never synchronises the device).
    """
    check_latent_inputs(q_latent, q_rope, cache, block_table, seq_lens, latent_offsets,
                        rope_offset)
    B, Tq, NB, Hq, W = q_latent.shape
    R = q_rope.shape[-1]
    out, lse = decode_outputs(out, lse, q_latent.shape, q_latent.device)
    if NB > MAX_STREAMS:  # groups of four streams, each reading the RoPE keys once
        return in_stream_groups(
            paged_latent_decode_triton, q_latent, q_rope, cache, block_table, seq_lens,
            latent_offsets, rope_offset, scale, out, lse,
            num_splits=num_splits, config=config, max_seq_len=max_seq_len)
    if finished_empty(out, lse):
        return out, lse
    q_latent, q_rope = rows_as(q_latent, cache), rows_as(q_rope, cache)
    if cache.stride(-1) != 1:
        raise ValueError("cache rows must be contiguous")
    page = cache.shape[1]
    large_smem = block_shared_memory(cache) >= LARGE_SMEM_BYTES
    if config is None:
        config = env_config()
    cfg = resolve_config(config, default_latent_config(NB, W, R, Tq * Hq, page, large_smem))
    spp = cfg.streams_per_program
    if spp < 1 or NB % spp:
        raise ValueError(f"streams_per_program={spp} does not divide {NB} streams")
    n_groups = NB // spp
    rows = Tq * Hq
    m_blocks = triton.cdiv(rows, cfg.block_m)
    use_tma = tma_possible(cache, cfg.block_n, (W, R)) if cfg.use_tma is None else cfg.use_tma
    if use_tma:
        if not tma_possible(cache, cfg.block_n, (W, R)):
            raise ValueError("use_tma needs pow2 widths, page % block_n == 0 and a contiguous pool")
        flat = cache.as_strided((cache.shape[0] * page, cache.shape[2]), (cache.stride(1), 1))
        lat_desc = make_descriptor(flat, [cfg.block_n, W])
        rope_desc = make_descriptor(flat, [cfg.block_n, R])
    else:
        lat_desc = rope_desc = cache
    width = spp * next_pow2(W) + R
    num_splits = num_splits_for(num_splits, max_seq_len, block_table, page,
                                B * m_blocks * n_groups, cfg.block_n, cache,
                                ctas_per_sm=1 if width >= 512 else 2,
                                configured=cfg.num_splits)
    o_ws, lse_ws = split_workspaces(num_splits, out, lse)
    offs = list(latent_offsets) + [0] * (MAX_STREAMS - NB)
    grid = (m_blocks * n_groups, num_splits, B)
    pdl = pdl_mode(cache)
    es = cache.element_size()
    w_lines, r_lines = next_pow2(triton.cdiv(W * es, 128)), next_pow2(triton.cdiv(R * es, 128))
    pf_tokens = split_prefetch_tokens(pdl, max_seq_len, block_table, page, cfg.block_n,
                                      num_splits, grid[0] * grid[1] * grid[2],
                                      spp * w_lines + r_lines, cache)
    _latent_decode_kernel[grid](
        q_latent, q_rope, cache, lat_desc, rope_desc, block_table, seq_lens, o_ws, lse_ws,
        q_latent.stride(0), q_latent.stride(1), q_latent.stride(2), q_latent.stride(3),
        q_rope.stride(0), q_rope.stride(1), q_rope.stride(2),
        cache.stride(0), cache.stride(1), block_table.stride(0),
        o_ws.stride(0), o_ws.stride(1), o_ws.stride(2), o_ws.stride(3), o_ws.stride(4),
        lse_ws.stride(0), lse_ws.stride(1), lse_ws.stride(2), lse_ws.stride(3),
        offs[0], offs[1], offs[2], offs[3], rope_offset,
        float(scale) * LOG2E, Hq, Tq, num_splits, n_groups, cache.shape[0],
        NB=spp, W=W, W_PAD=next_pow2(W), R=R, PAGE=page, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, SCALAR_PAGE=page % cfg.block_n == 0, USE_TMA=use_tma,
        PDL=pdl, PF_TOKENS=pf_tokens, W_LINES=w_lines, R_LINES=r_lines, LINE=128 // es,
        trace_ptr=trace_slot("latent", grid, cache),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(pdl),
    )
    finish_splits(o_ws, lse_ws, out, lse)
    return out, lse
