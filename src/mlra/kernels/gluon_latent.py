"""Hopper paged decode kernel for the latent family (MLA, GLA, MLRA), absorbed form, written in
Gluon with explicit warp specialisation.

Same contract as :func:`mlra.kernels.triton_latent.paged_latent_decode_triton` (and the
reference :func:`mlra.kernels.reference.paged_latent_decode_ref`); the Triton kernel stays the
portable path (other GPUs, the interpreter on CPU). One program handles one sequence, one
block of 64 query rows (``Tq x Hq`` rows: every head of every new token), one latent stream
and one split of the cached tokens. Two partitions run side by side:

* a producer warp issues TMA loads of each tile of ``BLOCK_N`` cached tokens -- the stream's
  latent columns ``[BLOCK_N, W]`` and the RoPE columns ``[BLOCK_N, R]``, addressed through the
  block table (one load per page a tile covers) -- into a ring of ``NUM_BUF`` shared buffers,
  each guarded by a pair of mbarriers (``ready``: the bytes landed; ``empty``: the consumers
  released it);
* consumer warpgroups (two side by side along the key / value columns for 512-wide streams,
  whose 64 x 512 fp32 accumulator needs them; one for narrower ones) compute ``S = Q_rope
  K_rope^T + Q_lat K_lat^T`` with wgmma from shared memory, the online softmax in base 2 and
  ``O += P V`` (V = the latent tile), then release the buffer.

So the loads of the next tiles are in flight while the tensor cores work on the current one:
at 1M tokens, 64 heads and 512 + 64 columns this reached 91% of the H200's memory floor in
a first, unpaged form of it (``benchmarks/decode/results/h200/gluon/call1``), where the
Triton kernel, which waits for each tile's loads before its products, reaches 54%; paged, in
``mlra bench decode``, 0.99x FlashMLA's time at 1M tokens (``results/h200/gluon/call4``).

For 512-wide streams whose splits are long, a second schedule of the same contract runs the
two consumer warpgroups as separate partitions that take turns scoring whole tiles
(:mod:`mlra.kernels.gluon_seesaw`; 91% of the floor at 1M tokens against 85%); see
:func:`default_gluon_config`.

Masking: the sequence's last tile may hold rows past its length (NaN in a pool's unused rows
must not leak): the consumers zero those rows of the latent tile in shared memory before
``P V`` and mask the scores of every position a query row may not see (causal inside the
``Tq`` new tokens). Splits are merged as for the Triton kernel
(:func:`mlra.kernels._triton_common.finish_splits`).

Programmatic dependent launch (Hopper): the kernel starts while the previous one (which
wrote the queries and the step's new cache rows) still runs. The consumers wait for it before
reading anything; the producer loads the tiles that hold no row of this step at once and
waits only before the first tile that may (see :func:`_producer`).

Numerics as the Triton kernel: bf16 operands, fp32 accumulation and statistics,
probabilities rounded to the cache dtype for ``P V``, fp32 outputs.

Import only after checking :func:`mlra.kernels.gluon_available`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
)

from mlra.kernels._triton_common import (
    LOG2E,
    block_shared_memory,
    config_from_env,
    decode_outputs,
    finish_splits,
    finished_empty,
    next_pow2,
    num_splits_for,
    pdl_mode,
    read_bound,
    rows_as,
    split_workspaces,
)
from mlra.kernels.triton_latent import MAX_STREAMS

BLOCK_M = 64  # query rows per program: one wgmma M per warpgroup
ROWS = gl.constexpr(BLOCK_M)
SMEM_RESERVE = 8 << 10  # shared memory kept free for the compiler's own scratch
#: 512-wide streams take the seesaw schedule where a split holds at least this many tokens
#: (H200: 313.4 against 334.8 us at 1M tokens, 7944 per split; 65.6 against 58.7 us at 128K,
#: 993 per split; ``benchmarks/decode/results/h200/fixed/call5``)
SEESAW_MIN_TOKENS = 2048
#: ``MLRA_GLUON_SEESAW=1`` / ``0``: always / never the seesaw schedule (unset: by length)
SEESAW_ENV = os.environ.get("MLRA_GLUON_SEESAW", "")
CONFIG_ENV = "MLRA_GLUON_CONFIG"
"""Environment variable with launch parameters as JSON (fields of :class:`GluonLatentConfig`,
e.g. ``{"block_n": 32, "num_buf": 3}``) for every call without a ``config``: tuning runs of
whole decode steps."""


@dataclass(frozen=True)
class GluonLatentConfig:
    """Launch parameters (``None``: :func:`default_gluon_config`)."""

    block_n: int | None = None
    num_buf: int | None = None
    #: consumer warpgroups (1 or 2), side by side along the score and value columns
    warpgroups: int | None = None
    #: 512-wide streams: the two warpgroups take turns scoring whole tiles
    #: (:mod:`mlra.kernels.gluon_seesaw`) instead of sharing every tile's scores
    seesaw: bool | None = None


def default_gluon_config(w: int, r: int, smem: int, config: GluonLatentConfig | None = None,
                         tokens_per_split: int | None = None) -> GluonLatentConfig:
    """``config`` with its unset fields chosen: for 512-wide streams 64-row tiles and two
    consumer warpgroups (side by side along the columns), for narrower ones 128-row tiles and
    one (H200, 1M tokens: GLA-2 at TP 2 174.8 us against 229.3 for 64 rows and two;
    ``benchmarks/decode/results/h200/gluon/call3``); as many ring buffers (2..4) as ``smem``
    bytes of shared memory hold beside the query block (MLA's 512 + 64 columns: two). 512-wide
    streams take the seesaw schedule (:mod:`mlra.kernels.gluon_seesaw`) where a split holds
    ``tokens_per_split >= SEESAW_MIN_TOKENS`` (``MLRA_GLUON_SEESAW`` overrides)."""
    config = config or GluonLatentConfig()
    wide = w >= 512
    block_n = config.block_n or (64 if wide else 128)
    seesaw = config.seesaw
    if seesaw is None:
        by_length = tokens_per_split is not None and tokens_per_split >= SEESAW_MIN_TOKENS
        seesaw = {"1": True, "0": False}.get(SEESAW_ENV, by_length)
    seesaw = bool(seesaw) and wide
    tile = block_n * (w + r) * 2
    q_bytes = BLOCK_M * (w + r) * 2
    p_bytes = BLOCK_M * block_n * 2 if seesaw else 0
    num_buf = config.num_buf or max(2, min(4, (smem - SMEM_RESERVE - q_bytes - p_bytes) // tile))
    return GluonLatentConfig(block_n=block_n, num_buf=num_buf,
                             warpgroups=2 if seesaw else config.warpgroups or (2 if wide else 1),
                             seesaw=seesaw)


def seesaw_p_slots(cfg: GluonLatentConfig, w: int, r: int, smem: int) -> int:
    """Probability buffers of the seesaw schedule: two where shared memory holds them beside
    the query block and the ring, else one."""
    used = (BLOCK_M + cfg.num_buf * cfg.block_n) * (w + r) * 2 + SMEM_RESERVE // 4
    return 2 if used + 2 * BLOCK_M * cfg.block_n * 2 <= smem else 1


@gluon.jit
def _gdc_wait():
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _gdc_launch_dependents():
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _tile_range(seq_len, Tq, pid_s, n_splits, BLOCK_N: gl.constexpr):
    """``[start, end)`` of split ``pid_s`` (whole tiles) and ``full_end``: tiles before it
    need no mask (as :func:`mlra.kernels._triton_common.split_range`)."""
    per = gl.cdiv(gl.cdiv(seq_len, BLOCK_N), n_splits)
    start = pid_s * per * BLOCK_N
    end = gl.minimum(start + per * BLOCK_N, seq_len)
    visible = gl.minimum(end, seq_len - Tq + 1)
    full_end = start + gl.maximum(visible - start, 0) // BLOCK_N * BLOCK_N
    return start, end, full_end


@gluon.jit
def _producer(kl_desc, kr_desc, kl_smem, kr_smem, ready, empty, bt_ptr, seq_lens_ptr,
              s_btb, lat_col, rope_col, Tq, n_splits, W: gl.constexpr, R: gl.constexpr,
              PAGE: gl.constexpr, BLOCK_N: gl.constexpr, SUB: gl.constexpr,
              NUM_BUF: gl.constexpr, PDL: gl.constexpr = 0):
    """Worker partition (one warp): TMA loads of the cache tiles into the ring, one load per
    page a tile covers (``SUB`` rows each).

    ``PDL``: the kernel launched early (programmatic dependent launch) and this partition has
    not waited yet. Only the step's previous kernel writes the cache (the ``Tq`` new rows of
    each sequence); the lengths and the block table were staged before the step. So the tiles
    that end before the new rows load at once, while the previous kernel still runs, and the
    partition waits (``griddepcontrol.wait``) before the first tile that may hold a new row."""
    b = gl.program_id(2)
    seq_len = gl.load(seq_lens_ptr + b)
    start, end, full_end = _tile_range(seq_len, Tq, gl.program_id(1), n_splits, BLOCK_N)
    n_tiles = gl.cdiv(gl.maximum(end - start, 0), BLOCK_N)
    # leading tiles that read only rows older than this step's (parts past `end` re-read
    # rows below `end`, so a tile is old when min(its end, end) <= seq_len - Tq)
    new_from = seq_len - Tq
    early = gl.where(end <= new_from, n_tiles, gl.maximum(new_from - start, 0) // BLOCK_N)
    tile_bytes: gl.constexpr = BLOCK_N * (W + R) * 2
    bt_row = bt_ptr + b * s_btb
    for i in range(n_tiles):
        if PDL:
            if i == early:
                _gdc_wait()
        slot = i % NUM_BUF
        # wait until the consumers released this slot in the previous round (round 0:
        # parity 1 is the phase before the barrier's first and passes at once)
        mbarrier.wait(empty.index(slot), ((i // NUM_BUF) & 1) ^ 1)
        bar = ready.index(slot)
        mbarrier.expect(bar, tile_bytes)
        n0 = start + i * BLOCK_N
        for u in gl.static_range(BLOCK_N // SUB):
            # a part past the sequence reads its last part again (the consumers zero those
            # rows): block-table entries past a sequence's pages may hold anything
            pos = gl.minimum(n0 + u * SUB, (end - 1) // SUB * SUB)
            row = gl.load(bt_row + pos // PAGE) * PAGE + pos % PAGE
            tma.async_copy_global_to_shared(kl_desc, [row, lat_col], bar,
                                            kl_smem.index(slot).slice(u * SUB, SUB))
            tma.async_copy_global_to_shared(kr_desc, [row, rope_col], bar,
                                            kr_smem.index(slot).slice(u * SUB, SUB))


@gluon.jit
def _zero_rows_past(kl, keep, BLOCK_N: gl.constexpr, W: gl.constexpr,
                    num_warps: gl.constexpr):
    """Zero rows ``keep..BLOCK_N`` of the latent tile ``kl`` in shared memory (64 columns at a
    time, so few registers), then fence so the tensor cores see the zeros."""
    zl: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    rows = gl.arange(0, BLOCK_N, gl.SliceLayout(1, zl))
    keep_row = gl.expand_dims(rows < keep, 1)
    for c in gl.static_range(W // 64):
        part = kl.slice(c * 64, 64, dim=1)
        x = part.load(zl)
        part.store(gl.where(keep_row, x, gl.zeros_like(x)))
    fence_async_shared()


@gluon.jit
def _consumer(q_lat_ptr, q_rope_ptr, ql_smem, qr_smem, kl_smem, kr_smem, ready, empty,
              seq_lens_ptr, o_ptr, lse_ptr,
              s_qb, s_qt, s_qj, s_qh, s_rb, s_rt, s_rh,
              s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
              qk_scale, Hq, Tq, n_splits, n_streams,
              W: gl.constexpr, R: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_BUF: gl.constexpr, WG: gl.constexpr, PDL: gl.constexpr = 0):
    """Default partition (``WG`` warpgroups): the query block into shared memory, then per
    tile the scores, the online softmax and ``P V``; the normalised output and the
    natural-log LSE of its rows at the end. ``PDL``: waits for the previous kernel (which
    wrote the queries) first."""
    if PDL:
        _gdc_wait()
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, WG], instr_shape=[16, BLOCK_N // WG, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, WG], instr_shape=[16, min(W // WG, 256), 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_load: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4 * WG, 1], [1, 0])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    pid_m = gl.program_id(0) // n_streams
    j = gl.program_id(0) % n_streams
    pid_s = gl.program_id(1)
    b = gl.program_id(2)
    seq_len = gl.load(seq_lens_ptr + b)
    start, end, full_end = _tile_range(seq_len, Tq, pid_s, n_splits, BLOCK_N)
    n_tiles = gl.cdiv(gl.maximum(end - start, 0), BLOCK_N)

    # the query block: rows (t, h) of this sequence and stream, zeros past Tq x Hq
    qrow = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(1, q_load))
    qt = gl.expand_dims(qrow // Hq, 1)
    qh = gl.expand_dims(qrow % Hq, 1)
    q_ok = gl.expand_dims(qrow < Tq * Hq, 1)
    cw = gl.expand_dims(gl.arange(0, W, gl.SliceLayout(0, q_load)), 0)
    cr = gl.expand_dims(gl.arange(0, R, gl.SliceLayout(0, q_load)), 0)
    ql = gl.load(q_lat_ptr + b * s_qb + j * s_qj + qt * s_qt + qh * s_qh + cw,
                 mask=q_ok & (cw < W), other=0.0)
    qr = gl.load(q_rope_ptr + b * s_rb + qt * s_rt + qh * s_rh + cr, mask=q_ok & (cr < R),
                 other=0.0)
    ql_smem.store(ql)
    qr_smem.store(qr)
    fence_async_shared()

    rows_s = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, row_s)
    limit = gl.expand_dims(seq_len - Tq + rows_s // Hq + 1, 1)  # row sees positions < limit
    offs_n = gl.expand_dims(gl.arange(0, BLOCK_N, col_s), 0)
    m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
    acc = gl.zeros([BLOCK_M, W], gl.float32, o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    for i in range(n_tiles):
        slot = i % NUM_BUF
        mbarrier.wait(ready.index(slot), (i // NUM_BUF) & 1)
        kl = kl_smem.index(slot)
        kr = kr_smem.index(slot)
        n0 = start + i * BLOCK_N
        if n0 + BLOCK_N > end:
            _zero_rows_past(kl, end - n0, BLOCK_N, W, 4 * WG)
        s = warpgroup_mma(qr_smem, kr.permute((1, 0)), s_zero, use_acc=False)
        s = warpgroup_mma(ql_smem, kl.permute((1, 0)), s)
        s = s * qk_scale
        if n0 + BLOCK_N > full_end:
            s = gl.where(n0 + offs_n < limit, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
        p_op = gl.convert_layout(p.to(ql_smem.dtype), p_layout)
        acc = warpgroup_mma(p_op, kl, acc)
        m_i = m_new
        mbarrier.arrive(empty.index(slot), count=1)

    _store_outputs(acc, m_i, l_i, rows_s, o_ptr, lse_ptr, pid_m, pid_s, b, j,
                   s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj, Hq, Tq,
                   0, W, W, BLOCK_M, row_o, col_o, True)


@gluon.jit
def _store_outputs(acc, m_i, l_i, rows_s, o_ptr, lse_ptr, pid_m, pid_s, b, j,
                   s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj, Hq, Tq,
                   COL0: gl.constexpr, COLS: gl.constexpr, W: gl.constexpr,
                   BLOCK_M: gl.constexpr, row_o: gl.constexpr, col_o: gl.constexpr,
                   STORE_LSE: gl.constexpr):
    """A consumer's epilogue: output columns ``COL0 .. COL0 + COLS`` of its rows normalised
    by the row sums ``l_i`` (zero where a row saw nothing) and, with ``STORE_LSE``, the rows'
    natural-log LSE from the running maxima ``m_i`` (base 2) and ``l_i``."""
    ok = l_i > 0
    inv = gl.where(ok, 1.0 / gl.where(ok, l_i, 1.0), 0.0)
    out = acc * gl.expand_dims(gl.convert_layout(inv, row_o), 1)
    rows_o = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, row_o)
    ot = gl.expand_dims(rows_o // Hq, 1)
    oh = gl.expand_dims(rows_o % Hq, 1)
    co = gl.expand_dims(COL0 + gl.arange(0, COLS, col_o), 0)
    o_ptrs = o_ptr + pid_s * s_os + b * s_ob + j * s_oj + ot * s_ot + oh * s_oh + co
    gl.store(o_ptrs, out, mask=gl.expand_dims(rows_o < Tq * Hq, 1) & (co < W))
    if STORE_LSE:
        lse = gl.where(ok, (m_i + gl.log2(gl.where(ok, l_i, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        lse_ptrs = (lse_ptr + pid_s * s_ls + b * s_lb + j * s_lj + (rows_s // Hq) * s_lt
                    + rows_s % Hq)
        gl.store(lse_ptrs, lse, mask=rows_s < Tq * Hq)


@gluon.jit
def _gluon_latent_kernel(
    q_lat_ptr, q_rope_ptr, kl_desc, kr_desc, bt_ptr, seq_lens_ptr, o_ptr, lse_ptr,
    s_qb, s_qt, s_qj, s_qh, s_rb, s_rt, s_rh, s_btb,
    s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
    lat0, lat1, lat2, lat3, rope_col, qk_scale, Hq, Tq, n_splits, n_streams,
    W: gl.constexpr, R: gl.constexpr, PAGE: gl.constexpr, BLOCK_N: gl.constexpr,
    SUB: gl.constexpr, NUM_BUF: gl.constexpr, WG: gl.constexpr, PDL: gl.constexpr,
):
    """Grid ``(row blocks x streams, splits, sequences)``; see the module docstring."""
    BLOCK_M: gl.constexpr = ROWS
    dtype: gl.constexpr = kl_desc.dtype
    ql_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, W], dtype)
    qr_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, R], dtype)
    ql_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, W], ql_layout)
    qr_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, R], qr_layout)
    kl_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, W], kl_desc.layout)
    kr_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, R], kr_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    for k in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(k), count=1)
        mbarrier.init(empty.index(k), count=1)
    fence_async_shared()
    # no wait here: with PDL the consumers wait before reading the queries, the producer
    # before the first tile that may hold this step's new rows (see _producer)
    j = gl.program_id(0) % n_streams
    lat_col = gl.where(j == 0, lat0, gl.where(j == 1, lat1, gl.where(j == 2, lat2, lat3)))

    gl.warp_specialize(
        [(_consumer, (q_lat_ptr, q_rope_ptr, ql_smem, qr_smem, kl_smem, kr_smem, ready, empty,
                      seq_lens_ptr, o_ptr, lse_ptr, s_qb, s_qt, s_qj, s_qh, s_rb, s_rt, s_rh,
                      s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
                      qk_scale, Hq, Tq, n_splits, n_streams, W, R, BLOCK_M, BLOCK_N, NUM_BUF,
                      WG, PDL)),
         (_producer, (kl_desc, kr_desc, kl_smem, kr_smem, ready, empty, bt_ptr, seq_lens_ptr,
                      s_btb, lat_col, rope_col, Tq, n_splits, W, R, PAGE, BLOCK_N, SUB,
                      NUM_BUF, PDL))],
        [1], [40])
    if PDL:
        _gdc_launch_dependents()
    for k in gl.static_range(NUM_BUF):
        mbarrier.invalidate(ready.index(k))
        mbarrier.invalidate(empty.index(k))


def gluon_latent_supports(q_latent: torch.Tensor, q_rope: torch.Tensor,
                          cache: torch.Tensor) -> bool:
    """Shapes the kernel takes on a Hopper GPU: a bf16 pool (fp16 would compile but is not
    tested on a GPU: the Triton kernel takes it) that TMA can read (one row-major 2-D array,
    16-byte aligned rows and column offsets), one stream's width a power of two from 64 to
    512, a RoPE width a power of two from 16 to 128, pages of 16, 32 or a multiple of 64 (a
    tile covers several pages or part of one)."""
    if not (cache.is_cuda and cache.dim() == 3 and q_latent.dim() == 5):
        return False
    if torch.cuda.get_device_capability(cache.device)[0] != 9:
        return False
    W, R, page = q_latent.shape[-1], q_rope.shape[-1], cache.shape[1]
    es = cache.element_size()
    return (cache.dtype == torch.bfloat16
            and W == next_pow2(W) and 64 <= W <= 512
            and R == next_pow2(R) and 16 <= R <= 128
            and (page % 64 == 0 or 64 % page == 0) and page >= 16
            and cache.stride(-1) == 1 and cache.stride(0) == page * cache.stride(1)
            and (cache.stride(1) * es) % 16 == 0 and cache.data_ptr() % 16 == 0
            and cache.shape[0] * page < 2**31)


def paged_latent_decode_gluon(
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
    config: GluonLatentConfig | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    max_seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gluon implementation of :func:`mlra.kernels.reference.paged_latent_decode_ref` for
    Hopper (:func:`gluon_latent_supports`); keyword-only extras as
    :func:`mlra.kernels.triton_latent.paged_latent_decode_triton`."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from mlra.kernels.triton_latent import check_latent_inputs, in_stream_groups

    check_latent_inputs(q_latent, q_rope, cache, block_table, seq_lens, latent_offsets,
                        rope_offset)
    if not gluon_latent_supports(q_latent, q_rope, cache):
        raise ValueError("paged_latent_decode_gluon: shapes outside gluon_latent_supports")
    B, Tq, NB, Hq, W = q_latent.shape
    R = q_rope.shape[-1]
    out, lse = decode_outputs(out, lse, q_latent.shape, q_latent.device)
    if NB > MAX_STREAMS:  # groups of four streams (the latent columns go in as scalars)
        return in_stream_groups(
            paged_latent_decode_gluon, q_latent, q_rope, cache, block_table, seq_lens,
            latent_offsets, rope_offset, scale, out, lse,
            num_splits=num_splits, config=config, max_seq_len=max_seq_len)
    if finished_empty(out, lse):
        return out, lse
    es = cache.element_size()
    for off in (*latent_offsets, rope_offset):
        if (off * es) % 16:
            raise ValueError(f"column offset {off} is not 16-byte aligned (TMA)")
    q_latent, q_rope = rows_as(q_latent, cache), rows_as(q_rope, cache)
    page = cache.shape[1]
    if config is None:
        config = config_from_env(CONFIG_ENV, GluonLatentConfig)
    cfg = default_gluon_config(W, R, block_shared_memory(cache), config)
    sub = min(page, cfg.block_n)
    if cfg.block_n % sub or page % sub:
        raise ValueError(f"block_n {cfg.block_n} and page {page} do not tile each other")
    flat = cache.as_strided((cache.shape[0] * page, cache.shape[2]), (cache.stride(1), 1))
    gdt = gl.bfloat16
    kl_desc = TensorDescriptor.from_tensor(
        flat, [sub, W], gl.NVMMASharedLayout.get_default_for([cfg.block_n, W], gdt))
    kr_desc = TensorDescriptor.from_tensor(
        flat, [sub, R], gl.NVMMASharedLayout.get_default_for([cfg.block_n, R], gdt))
    m_blocks = triton.cdiv(Tq * Hq, BLOCK_M)
    num_splits = num_splits_for(num_splits, max_seq_len, block_table, page,
                                B * m_blocks * NB, cfg.block_n, cache, ctas_per_sm=1)
    if W >= 512 and (config is None or config.seesaw is None):
        longest = read_bound(max_seq_len, block_table, page)
        cfg = default_gluon_config(W, R, block_shared_memory(cache), config,
                                   tokens_per_split=longest // num_splits)
    o_ws, lse_ws = split_workspaces(num_splits, out, lse)
    offs = [int(o) for o in latent_offsets] + [0] * (MAX_STREAMS - NB)
    pdl = pdl_mode(cache) > 0
    args = (
        q_latent, q_rope, kl_desc, kr_desc, block_table, seq_lens, o_ws, lse_ws,
        q_latent.stride(0), q_latent.stride(1), q_latent.stride(2), q_latent.stride(3),
        q_rope.stride(0), q_rope.stride(1), q_rope.stride(2), block_table.stride(0),
        o_ws.stride(0), o_ws.stride(1), o_ws.stride(2), o_ws.stride(3), o_ws.stride(4),
        lse_ws.stride(0), lse_ws.stride(1), lse_ws.stride(2), lse_ws.stride(3),
        *offs, rope_offset, float(scale) * LOG2E, Hq, Tq, num_splits, NB)
    grid = (m_blocks * NB, num_splits, B)
    launch = {"launch_pdl": True} if pdl else {}
    if cfg.seesaw:
        from mlra.kernels.gluon_seesaw import _seesaw_kernel

        _seesaw_kernel[grid](
            *args, W=W, R=R, PAGE=page, BLOCK_N=cfg.block_n, SUB=sub, NUM_BUF=cfg.num_buf,
            P_SLOTS=seesaw_p_slots(cfg, W, R, block_shared_memory(cache)), PDL=int(pdl),
            num_warps=4, **launch)
    else:
        _gluon_latent_kernel[grid](
            *args, W=W, R=R, PAGE=page, BLOCK_N=cfg.block_n, SUB=sub, NUM_BUF=cfg.num_buf,
            WG=cfg.warpgroups, PDL=int(pdl), num_warps=4 * cfg.warpgroups, **launch)
    finish_splits(o_ws, lse_ws, out, lse)
    return out, lse



def compile_for_sm90(w: int, r: int, page: int, config: GluonLatentConfig | None = None,
                     pdl: bool = True, smem: int = 232448):
    """The kernel compiled for sm_90 without a GPU (Triton's bundled ptxas), for tests and
    resource reports: registers, spills, shared memory and the PTX of one configuration."""
    from mlra.kernels.aot import compile_gluon_sm90

    cfg = default_gluon_config(w, r, smem, config)
    sub = min(page, cfg.block_n)
    consts = {"W": w, "R": r, "PAGE": page, "BLOCK_N": cfg.block_n, "SUB": sub,
              "NUM_BUF": cfg.num_buf, "PDL": int(pdl)}
    descs = {name: f"tensordesc<bf16[{sub}, {c}],"
             f"{gl.NVMMASharedLayout.get_default_for([cfg.block_n, c], gl.bfloat16)!r}>"
             for name, c in (("kl_desc", w), ("kr_desc", r))}
    types = {**descs, "q_lat_ptr": "*bf16", "q_rope_ptr": "*bf16", "bt_ptr": "*i32",
             "seq_lens_ptr": "*i32", "o_ptr": "*fp32", "lse_ptr": "*fp32", "qk_scale": "fp32"}
    if cfg.seesaw:
        from mlra.kernels.gluon_seesaw import _seesaw_kernel

        consts["P_SLOTS"] = seesaw_p_slots(cfg, w, r, smem)
        return compile_gluon_sm90(_seesaw_kernel, types, consts, num_warps=4)
    consts["WG"] = cfg.warpgroups
    return compile_gluon_sm90(_gluon_latent_kernel, types, consts,
                              num_warps=4 * cfg.warpgroups)
