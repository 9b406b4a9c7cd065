"""Seesaw schedule of the Gluon latent decode kernel, for 512-wide streams (MLA).

The default Gluon kernel (:mod:`mlra.kernels.gluon_latent`) splits a 512-wide stream's work
between two consumer warpgroups along the *key* columns of the scores and the value columns
of the output, so every tile needs the two warpgroups to exchange row maxima, row sums and
probabilities through shared memory, in step. Here the two warpgroups are separate partitions
that own one half of the output columns each and take turns scoring whole tiles:

* warpgroup ``w`` scores the tiles ``i`` with ``i % 2 == w``: ``S_i = Q K_i^T`` (all 512 + R
  columns), the online-softmax maximum ``m_i = max(m_{i-1}, rowmax S_i)``, ``P_i = exp2(S_i -
  m_i)``, and publishes ``P_i`` (bf16) and ``m_i`` in shared memory;
* both warpgroups rescale their half of the output by ``exp2(m_{i-1} - m_i)`` and add ``P_i
  V_i`` for their 256 columns; each keeps the row sum of the tiles it scored (rescaled at
  every tile), and the two sums are added at the end.

While one warpgroup runs the softmax of tile ``i``, the other runs the score product of tile
``i + 1`` and its half of the ``P V`` products: the tensor cores stay busy across the
softmax. The scores are computed once per tile (no redundant FLOPs); the only serial chain is
``m_{i-1} -> m_i`` (one shared-memory hand-over per tile). Same contract, producer warp, TMA
ring, masking and split outputs as the default kernel.

Import only after checking :func:`mlra.kernels.gluon_available`.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
)

from mlra.kernels.gluon_latent import (
    ROWS,
    _gdc_launch_dependents,
    _gdc_wait,
    _producer,
    _store_outputs,
    _tile_range,
    _zero_rows_past,
)


@gluon.jit
def _seesaw_consumer(ql_smem, qr_smem, kl_smem, kr_smem, p_smem, m_smem, l_smem,
                     ready, empty, p_full, p_empty, l_bar, seq_lens_ptr, o_ptr, lse_ptr,
                     s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
                     qk_scale, Hq, Tq, n_splits, n_streams,
                     W: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     NUM_BUF: gl.constexpr, P_SLOTS: gl.constexpr, ME: gl.constexpr):
    """One consumer warpgroup: output columns ``ME * W/2 ..``; scores the tiles ``i % 2 ==
    ME``."""
    HALF: gl.constexpr = W // 2
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HALF, 16])
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

    rows_s = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, row_s)
    limit = gl.expand_dims(seq_len - Tq + rows_s // Hq + 1, 1)  # row sees positions < limit
    offs_n = gl.expand_dims(gl.arange(0, BLOCK_N, col_s), 0)
    m_run = gl.full([BLOCK_M], -1.0e30, gl.float32, row_s)  # the maximum after the last tile
    l_own = gl.zeros([BLOCK_M], gl.float32, row_s)  # row sum of the tiles scored here
    acc = gl.zeros([BLOCK_M, HALF], gl.float32, o_layout)
    for i in range(n_tiles):
        slot = i % NUM_BUF
        ps = i % P_SLOTS
        use = i // P_SLOTS
        mbarrier.wait(ready.index(slot), (i // NUM_BUF) & 1)
        kl = kl_smem.index(slot)
        if i % 2 == ME:
            n0 = start + i * BLOCK_N
            s = warpgroup_mma(qr_smem, kr_smem.index(slot).permute((1, 0)),
                              gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False)
            s = warpgroup_mma(ql_smem, kl.permute((1, 0)), s)
            s = s * qk_scale
            if n0 + BLOCK_N > full_end:
                s = gl.where(n0 + offs_n < limit, s, float("-inf"))
            m_new = gl.maximum(m_run, gl.max(s, 1))
            p = gl.exp2(s - gl.expand_dims(m_new, 1))
            l_own = l_own * gl.exp2(m_run - m_new) + gl.sum(p, 1)
            # the slot is free once both warpgroups finished P V of its previous tile
            mbarrier.wait(p_empty.index(ps), (use & 1) ^ 1)
            if n0 + BLOCK_N > end:  # rows past the sequence may hold NaN: zero before P V
                _zero_rows_past(kl, end - n0, BLOCK_N, W, 4)
            p_smem.index(ps).store(p.to(ql_smem.dtype))
            m_smem.index(ps).store(m_new)
            fence_async_shared()
            mbarrier.arrive(p_full.index(ps), count=1)
        else:
            mbarrier.wait(p_full.index(ps), use & 1)
            m_new = m_smem.index(ps).load(row_s)
            l_own = l_own * gl.exp2(m_run - m_new)
        alpha = gl.convert_layout(gl.exp2(m_run - m_new), row_o)
        acc = acc * gl.expand_dims(alpha, 1)
        acc = warpgroup_mma(p_smem.index(ps), kl.slice(ME * HALF, HALF, dim=1), acc)
        m_run = m_new
        mbarrier.arrive(empty.index(slot), count=1)
        mbarrier.arrive(p_empty.index(ps), count=1)

    # the row sum: this warpgroup's tiles plus the other's
    l_smem.index(ME).store(l_own)
    mbarrier.arrive(l_bar, count=1)
    mbarrier.wait(l_bar, 0)
    l_i = l_own + l_smem.index(1 - ME).load(row_s)
    _store_outputs(acc, m_run, l_i, rows_s, o_ptr, lse_ptr, pid_m, pid_s, b, j,
                   s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj, Hq, Tq,
                   ME * HALF, HALF, W, BLOCK_M, row_o, col_o, ME == 0)


@gluon.jit
def _seesaw_kernel(
    q_lat_ptr, q_rope_ptr, kl_desc, kr_desc, bt_ptr, seq_lens_ptr, o_ptr, lse_ptr,
    s_qb, s_qt, s_qj, s_qh, s_rb, s_rt, s_rh, s_btb,
    s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
    lat0, lat1, lat2, lat3, rope_col, qk_scale, Hq, Tq, n_splits, n_streams,
    W: gl.constexpr, R: gl.constexpr, PAGE: gl.constexpr, BLOCK_N: gl.constexpr,
    SUB: gl.constexpr, NUM_BUF: gl.constexpr, P_SLOTS: gl.constexpr, PDL: gl.constexpr,
):
    """Grid ``(row blocks x streams, splits, sequences)``, 4 + 4 + 1 warps; see the module
    docstring."""
    BLOCK_M: gl.constexpr = ROWS
    dtype: gl.constexpr = kl_desc.dtype
    ql_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, W], dtype)
    qr_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, R], dtype)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], dtype)
    vec_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
    ql_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, W], ql_layout)
    qr_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, R], qr_layout)
    kl_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, W], kl_desc.layout)
    kr_smem = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, R], kr_desc.layout)
    p_smem = gl.allocate_shared_memory(dtype, [P_SLOTS, BLOCK_M, BLOCK_N], p_layout)
    m_smem = gl.allocate_shared_memory(gl.float32, [P_SLOTS, BLOCK_M], vec_layout)
    l_smem = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M], vec_layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    p_full = gl.allocate_shared_memory(gl.int64, [P_SLOTS, 1], bar_layout)
    p_empty = gl.allocate_shared_memory(gl.int64, [P_SLOTS, 1], bar_layout)
    l_bar = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    for k in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(k), count=1)
        mbarrier.init(empty.index(k), count=2)  # both consumer warpgroups release a tile
    for k in gl.static_range(P_SLOTS):
        mbarrier.init(p_full.index(k), count=1)
        mbarrier.init(p_empty.index(k), count=2)
    mbarrier.init(l_bar, count=2)
    fence_async_shared()
    if PDL:
        _gdc_wait()  # the query, the new cache rows and the lengths come from earlier kernels
    pid_m = gl.program_id(0) // n_streams
    j = gl.program_id(0) % n_streams
    b = gl.program_id(2)
    lat_col = gl.where(j == 0, lat0, gl.where(j == 1, lat1, gl.where(j == 2, lat2, lat3)))

    # the query block (rows (t, h) of this sequence and stream; zeros past Tq x Hq) into
    # shared memory, 64 columns at a time
    q_load: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    qrow = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(1, q_load))
    qt = gl.expand_dims(qrow // Hq, 1)
    qh = gl.expand_dims(qrow % Hq, 1)
    q_ok = gl.expand_dims(qrow < Tq * Hq, 1)
    c64 = gl.expand_dims(gl.arange(0, 64, gl.SliceLayout(0, q_load)), 0)
    q_row_ptr = q_lat_ptr + b * s_qb + j * s_qj + qt * s_qt + qh * s_qh
    for c in gl.static_range(W // 64):
        ql_smem.slice(c * 64, 64, dim=1).store(
            gl.load(q_row_ptr + c * 64 + c64, mask=q_ok, other=0.0))
    cr = gl.expand_dims(gl.arange(0, R, gl.SliceLayout(0, q_load)), 0)
    qr_smem.store(gl.load(q_rope_ptr + b * s_rb + qt * s_rt + qh * s_rh + cr,
                          mask=q_ok & (cr < R), other=0.0))
    fence_async_shared()

    gl.warp_specialize(
        [(_seesaw_consumer, (ql_smem, qr_smem, kl_smem, kr_smem, p_smem, m_smem, l_smem,
                             ready, empty, p_full, p_empty, l_bar, seq_lens_ptr, o_ptr,
                             lse_ptr, s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
                             qk_scale, Hq, Tq, n_splits, n_streams, W, BLOCK_M, BLOCK_N,
                             NUM_BUF, P_SLOTS, 0)),
         (_seesaw_consumer, (ql_smem, qr_smem, kl_smem, kr_smem, p_smem, m_smem, l_smem,
                             ready, empty, p_full, p_empty, l_bar, seq_lens_ptr, o_ptr,
                             lse_ptr, s_os, s_ob, s_ot, s_oj, s_oh, s_ls, s_lb, s_lt, s_lj,
                             qk_scale, Hq, Tq, n_splits, n_streams, W, BLOCK_M, BLOCK_N,
                             NUM_BUF, P_SLOTS, 1)),
         (_producer, (kl_desc, kr_desc, kl_smem, kr_smem, ready, empty, bt_ptr, seq_lens_ptr,
                      s_btb, lat_col, rope_col, Tq, n_splits, W, R, PAGE, BLOCK_N, SUB,
                      NUM_BUF))],
        [4, 1], [232, 40])
    if PDL:
        _gdc_launch_dependents()
    for k in gl.static_range(NUM_BUF):
        mbarrier.invalidate(ready.index(k))
        mbarrier.invalidate(empty.index(k))
