"""Kernels of the Gluon training-attention probe (``gluon_attn_probe.py``, its driver): causal
training attention (forward) of the latent family with explicit warp specialisation for
Hopper (sm_90).

Contract: :func:`mlra.kernels.reference.latent_train_attention_ref` (plus the per-branch LSE in
the log2 domain that :func:`mlra.kernels.triton_latent_train.forward` stores). Per query head
``h`` and branch ``b``: ``S_b = scale * (q_nope . k_nope[b] + q_rope . k_rope)``, causal, its own
softmax; ``out = out_scale * sum_b softmax(S_b) @ v[b]``. ``q_rope . k_rope`` is computed once
per key tile and added to every branch's NoPE scores of the program's chunk.

One program = one (batch, head), one block of ``BLOCK_M`` = 128 query rows and one chunk of
``BPP`` (branches per program) consecutive branches; key tiles ``0 .. last tile touching the
diagonal``. The grid is ``(B * H * chunks, query blocks)``, query blocks in reverse order (the
longest programs start first). Two partitions:

* producer (worker, 1 warp, ``PRODUCER_REGS`` registers): TMA loads of the query block (NoPE
  ``[128, D]`` and RoPE ``[128, R]``, once) and, per key tile, the RoPE keys ``[BLOCK_N, R]``
  and for each branch of the chunk its NoPE keys ``[BLOCK_N, D]`` and values ``[BLOCK_N, Dv]``
  into a ring of ``NUM_BUF`` stages. All are 2-D descriptors over flattened views (``kv`` as
  ``[B * T, NB * Hkv * (D + Dv)]``, a branch / KV head picked by the column coordinate); Gluon
  block shapes must be powers of two, so keys and values are separate blocks;
* consumers (default partition, 8 warps = two warpgroups): the MMA layout stacks the two
  warpgroups along M (``warps_per_cta = [8, 1]``), so each owns 64 of the 128 query rows, its
  wgmmas are m64nNk16 and the row max / sum stay inside a warpgroup. Per tile: ``S_r = Q_rope
  K_rope^T`` once; per branch ``S_b = Q_nope K_b^T + S_r`` (``S_r`` as the accumulator), the
  causal mask on diagonal tiles only (and keys ``>= T``), the online softmax in base 2,
  ``acc_b += P_b V_b`` (P from registers). With ``OVERLAP`` the next score product (the next
  branch of the tile, or the next tile's RoPE + first branch) is issued as an async wgmma
  before this branch's softmax. With ``SPLIT`` the two warpgroups are two partitions (4 warps
  each, its 64 rows of the query block), so neither waits for the other's softmax: the lesson
  of the decode kernel's seesaw schedule (both release every slot: ``empty`` counts two).

Buffer protocol (per slot ``s``, ``ready[s]`` / ``empty[s]`` count-1 mbarriers; tile ``i`` uses
slot ``i % NUM_BUF`` in round ``r = i // NUM_BUF``): the producer waits ``empty[s]`` with parity
``(r & 1) ^ 1`` (round 0 passes on the fresh barrier), ``expect(ready[s], tile bytes)`` and
issues the loads; the consumers wait ``ready[s]`` with parity ``r & 1`` and arrive once on
``empty[s]`` after the tile's last ``P V`` wgmma has completed (a synchronous wgmma: ``wait_group
0``), so no wgmma still reads the slot.

Branch chunks: ``BPP`` fp32 accumulators of 64 x Dv per warpgroup cost 64 registers per thread
each at Dv = 128, so four do not fit beside the scores; with ``BPP < NB`` each chunk writes an
fp32 partial output ``[chunks, B, T, H, Dv]`` (already scaled and normalised per branch) and
torch sums the chunks (part of the timed call in ``--bench``). With one chunk the program
stores the bf16 output directly.

Odd ``T``: the flattened views make a tile past a sequence's end read the next sequence's rows
(or TMA's zero fill after the last): those keys are masked (``n >= T``, and causality), query
rows ``>= T`` are not stored. NaN-free inputs are assumed (as in training).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634
BLOCK_M = 128  # query rows per program: 64 per consumer warpgroup
CONSUMER_WARPS = 8  # two warpgroups stacked along M
PRODUCER_REGS = 24  # registers of the producer warp (setmaxnreg), as the decode probe
CONSUMER_REGS = 240  # registers of the second consumer partition (``split``)


# ------------------------------------------------------------------------------------------
# kernel
# ------------------------------------------------------------------------------------------
@gluon.jit
def _coords(T, H, NB, BLOCK_M: gl.constexpr, BPP: gl.constexpr):
    """``(b, h, chunk, m0)`` of this program: grid axis 0 = (b, h, chunk), axis 1 = query
    blocks in reverse order."""
    nc = NB // BPP
    chunk = gl.program_id(0) % nc
    bh = gl.program_id(0) // nc
    m0 = (gl.num_programs(1) - 1 - gl.program_id(1)) * BLOCK_M
    return bh // H, bh % H, chunk, m0


@gluon.jit
def _producer(qn_desc, qr_desc, k_desc, v_desc, kr_desc, qn_smem, qr_smem, k_smem, v_smem,
              kr_smem, q_bar, ready, empty, T, H, HKV, NB,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, DV: gl.constexpr,
              R: gl.constexpr, BPP: gl.constexpr, NUM_BUF: gl.constexpr):
    """Worker partition: TMA loads of the query block (once) and of each key tile (RoPE keys,
    then per branch of the chunk its NoPE keys and values) into the ring."""
    b, h, chunk, m0 = _coords(T, H, NB, BLOCK_M, BPP)
    n_tiles = gl.cdiv(gl.minimum(m0 + BLOCK_M, T), BLOCK_N)
    row0 = b * T
    g = h // (H // HKV)
    mbarrier.expect(q_bar, qn_desc.block_type.nbytes + qr_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(qn_desc, [row0 + m0, h * D], q_bar, qn_smem)
    tma.async_copy_global_to_shared(qr_desc, [row0 + m0, h * R], q_bar, qr_smem)
    tile_bytes: gl.constexpr = (BPP * (k_desc.block_type.nbytes + v_desc.block_type.nbytes)
                                + kr_desc.block_type.nbytes)
    col0 = (chunk * BPP * HKV + g) * (D + DV)  # branch chunk*BPP, KV head g
    for i in range(n_tiles):
        slot = i % NUM_BUF
        # wait until the consumers released this slot in the previous round; in round 0
        # parity 1 refers to the phase before the barrier's first one and passes at once
        mbarrier.wait(empty.index(slot), ((i // NUM_BUF) & 1) ^ 1)
        bar = ready.index(slot)
        mbarrier.expect(bar, tile_bytes)
        row = row0 + i * BLOCK_N
        tma.async_copy_global_to_shared(kr_desc, [row, 0], bar, kr_smem.index(slot))
        for j in gl.static_range(BPP):
            col = col0 + j * HKV * (D + DV)
            tma.async_copy_global_to_shared(k_desc, [row, col], bar,
                                            k_smem.index(slot * BPP + j))
            tma.async_copy_global_to_shared(v_desc, [row, col + D], bar,
                                            v_smem.index(slot * BPP + j))


@gluon.jit
def _softmax_pv(s, v, m_i, l_i, acc, masked, n0, rows, cols, T, qk_scale,
                row_o: gl.constexpr, p_layout: gl.constexpr):
    """One branch's online-softmax step on its raw scores ``s`` (RoPE included) of one tile,
    then ``acc += P @ V`` (synchronous: no wgmma reads the tile when it returns). ``m_i`` is
    in the scaled log2 domain; the scale is folded into the exponent."""
    if masked:  # diagonal tile (or past T): key n visible to row m iff n <= m and n < T
        key = n0 + gl.expand_dims(cols, 0)
        keep = (key <= gl.expand_dims(rows, 1)) & (key < T)
        s = gl.where(keep, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    l_i = l_i * alpha + gl.sum(p, 1)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
    p_op = gl.convert_layout(p.to(gl.bfloat16), p_layout)
    acc = warpgroup_mma(p_op, v, acc)
    return m_new, l_i, acc


@gluon.jit
def _first_scores(qn_smem, qr_smem, k, kr, s_zero, KEEP_ROPE: gl.constexpr):
    """Issue the scores of a tile's first branch as an async wgmma: ``(S_r, token)``. With
    ``KEEP_ROPE`` (more branches follow) ``S_r`` is computed first (synchronously) and kept;
    else the two products are chained and ``S_r`` is a placeholder."""
    if KEEP_ROPE:
        s_r = warpgroup_mma(qr_smem, kr.permute((1, 0)), s_zero, use_acc=False)
        tok = warpgroup_mma(qn_smem, k.permute((1, 0)), s_r, is_async=True)
    else:
        s_r = s_zero
        tok = warpgroup_mma(qr_smem, kr.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        tok = warpgroup_mma(qn_smem, k.permute((1, 0)), tok, is_async=True)
    return s_r, tok


@gluon.jit
def _next_scores(i, j, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem, kr_smem, ready, s_zero,
                 BPP: gl.constexpr, NUM_BUF: gl.constexpr, PREFETCH: gl.constexpr):
    """``OVERLAP``: after branch ``j`` of tile ``i`` took its scores, issue the next score
    product (branch ``j + 1`` of the tile, else the next tile's first branch when
    ``PREFETCH``) before ``j``'s softmax."""
    if j + 1 < BPP:
        slot = i % NUM_BUF
        tok = warpgroup_mma(qn_smem, k_smem.index(slot * BPP + j + 1).permute((1, 0)), s_r,
                            is_async=True)
    elif PREFETCH:
        nxt = (i + 1) % NUM_BUF
        mbarrier.wait(ready.index(nxt), ((i + 1) // NUM_BUF) & 1)
        s_r, tok = _first_scores(qn_smem, qr_smem, k_smem.index(nxt * BPP),
                                 kr_smem.index(nxt), s_zero, BPP > 1)
    return s_r, tok


@gluon.jit
def _overlap_tile(i, n_tiles, s_r, tok, m_a, l_a, acc_a, m_b, l_b, acc_b, qn_smem, qr_smem,
                  k_smem, v_smem, kr_smem, ready, empty, s_zero, m0, rows, cols, T, qk_scale,
                  BLOCK_N: gl.constexpr, BPP: gl.constexpr, NUM_BUF: gl.constexpr,
                  row_o: gl.constexpr, p_layout: gl.constexpr, PREFETCH: gl.constexpr):
    """``OVERLAP``: tile ``i``'s branches, each's softmax and ``P V`` run while the next score
    product (the tile's next branch, or with ``PREFETCH`` the next tile's first) is in
    flight; the tile's buffer released at the end."""
    slot = i % NUM_BUF
    n0 = i * BLOCK_N
    masked = n0 + BLOCK_N - 1 > m0
    s = warpgroup_mma_wait(0, deps=[tok])
    s_r, tok = _next_scores(i, 0, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem, kr_smem,
                            ready, s_zero, BPP, NUM_BUF, PREFETCH)
    m_a, l_a, acc_a = _softmax_pv(s, v_smem.index(slot * BPP), m_a, l_a, acc_a, masked,
                                  n0, rows, cols, T, qk_scale, row_o, p_layout)
    if BPP > 1:
        s = warpgroup_mma_wait(0, deps=[tok])
        s_r, tok = _next_scores(i, 1, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem, kr_smem,
                                ready, s_zero, BPP, NUM_BUF, PREFETCH)
        m_b, l_b, acc_b = _softmax_pv(s, v_smem.index(slot * BPP + 1), m_b, l_b, acc_b,
                                      masked, n0, rows, cols, T, qk_scale, row_o, p_layout)
    mbarrier.arrive(empty.index(slot), count=1)
    return s_r, tok, m_a, l_a, acc_a, m_b, l_b, acc_b


@gluon.jit
def _finish(acc, m_i, l_i, lse_ptr, rows_s, T, out_scale, row_o: gl.constexpr):
    """Store one branch's log2-domain LSE (rows < T); return ``out_scale * acc / l``."""
    gl.store(lse_ptr + rows_s, m_i + gl.log2(l_i), mask=rows_s < T)
    return acc * gl.expand_dims(gl.convert_layout(out_scale / l_i, row_o), 1)


@gluon.jit
def _consumer(qn_smem, qr_smem, k_smem, v_smem, kr_smem, q_bar, ready, empty, o_ptr, lse_ptr,
              T, H, NB, n_rows, qk_scale, out_scale,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, DV: gl.constexpr,
              BPP: gl.constexpr, NUM_BUF: gl.constexpr, OVERLAP: gl.constexpr,
              WARPS: gl.constexpr, ROWS: gl.constexpr, ME: gl.constexpr):
    """A consumer partition (``WARPS`` warps for ``ROWS`` query rows from ``m0 + ME * ROWS``:
    the whole block in one partition of two warpgroups, or one half per ``SPLIT`` partition):
    scores, online softmax and ``P V`` per branch of the chunk, buffer release; epilogue (sum
    of the chunk's normalised branch outputs, per-branch LSE)."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, DV, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    b, h, chunk, m0 = _coords(T, H, NB, BLOCK_M, BPP)
    # every partition takes every tile of the block (the buffers are released by all)
    n_tiles = gl.cdiv(gl.minimum(m0 + BLOCK_M, T), BLOCK_N)
    rows = m0 + ME * ROWS + gl.arange(0, ROWS, row_s)
    cols = gl.arange(0, BLOCK_N, col_s)
    qn_smem = qn_smem.slice(ME * ROWS, ROWS, dim=0)
    qr_smem = qr_smem.slice(ME * ROWS, ROWS, dim=0)

    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    m_a = gl.full([ROWS], -1.0e30, gl.float32, row_s)
    l_a = gl.zeros([ROWS], gl.float32, row_s)
    acc_a = gl.zeros([ROWS, DV], gl.float32, o_layout)
    m_b = m_a
    l_b = l_a
    acc_b = acc_a

    mbarrier.wait(q_bar, 0)
    if OVERLAP:
        mbarrier.wait(ready.index(0), 0)
        s_r, tok = _first_scores(qn_smem, qr_smem, k_smem.index(0), kr_smem.index(0), s_zero,
                                 BPP > 1)
        for i in range(n_tiles - 1):
            s_r, tok, m_a, l_a, acc_a, m_b, l_b, acc_b = _overlap_tile(
                i, n_tiles, s_r, tok, m_a, l_a, acc_a, m_b, l_b, acc_b, qn_smem, qr_smem,
                k_smem, v_smem, kr_smem, ready, empty, s_zero, m0, rows, cols, T, qk_scale,
                BLOCK_N, BPP, NUM_BUF, row_o, p_layout, True)
        # the last tile: no prefetch past it
        s_r, tok, m_a, l_a, acc_a, m_b, l_b, acc_b = _overlap_tile(
            n_tiles - 1, n_tiles, s_r, tok, m_a, l_a, acc_a, m_b, l_b, acc_b, qn_smem, qr_smem,
            k_smem, v_smem, kr_smem, ready, empty, s_zero, m0, rows, cols, T, qk_scale,
            BLOCK_N, BPP, NUM_BUF, row_o, p_layout, False)
    else:
        for i in range(n_tiles):
            slot = i % NUM_BUF
            mbarrier.wait(ready.index(slot), (i // NUM_BUF) & 1)
            n0 = i * BLOCK_N
            masked = n0 + BLOCK_N - 1 > m0
            # the RoPE scores once per tile, the accumulator of every branch's NoPE product
            s_r = warpgroup_mma(qr_smem, kr_smem.index(slot).permute((1, 0)), s_zero,
                                use_acc=False)
            s = warpgroup_mma(qn_smem, k_smem.index(slot * BPP).permute((1, 0)), s_r)
            m_a, l_a, acc_a = _softmax_pv(s, v_smem.index(slot * BPP), m_a, l_a, acc_a, masked,
                                          n0, rows, cols, T, qk_scale, row_o, p_layout)
            if BPP > 1:
                s = warpgroup_mma(qn_smem, k_smem.index(slot * BPP + 1).permute((1, 0)), s_r)
                m_b, l_b, acc_b = _softmax_pv(s, v_smem.index(slot * BPP + 1), m_b, l_b, acc_b,
                                              masked, n0, rows, cols, T, qk_scale, row_o,
                                              p_layout)
            mbarrier.arrive(empty.index(slot), count=1)

    # epilogue: per-branch LSE [B, NB, H, T]; out (or this chunk's fp32 partial) [.., T, H, DV]
    br0 = chunk * BPP
    lse_base = lse_ptr + ((b * NB + br0) * H + h) * T
    out = _finish(acc_a, m_a, l_a, lse_base, rows, T, out_scale, row_o)
    if BPP > 1:
        out += _finish(acc_b, m_b, l_b, lse_base + H * T, rows, T, out_scale, row_o)
    rows_o = m0 + ME * ROWS + gl.arange(0, ROWS, row_o)
    cols_o = gl.arange(0, DV, col_o)
    o_rows = (chunk * n_rows + b * T + rows_o) * H + h
    o_ptrs = o_ptr + gl.expand_dims(o_rows, 1) * DV + gl.expand_dims(cols_o, 0)
    o_mask = gl.expand_dims(rows_o < T, 1) & gl.expand_dims(cols_o < DV, 0)
    gl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=o_mask)


@gluon.jit
def _latent_train_fwd_ws(qn_desc, qr_desc, k_desc, v_desc, kr_desc, o_ptr, lse_ptr,
                         T, H, HKV, NB, n_rows, qk_scale, out_scale,
                         BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
                         DV: gl.constexpr, R: gl.constexpr, BPP: gl.constexpr,
                         NUM_BUF: gl.constexpr, OVERLAP: gl.constexpr, WARPS: gl.constexpr,
                         PRODUCER_REGS: gl.constexpr, SPLIT: gl.constexpr,
                         CONSUMER_REGS: gl.constexpr):
    """Grid ``(B * H * NB / BPP, cdiv(T, BLOCK_M))``; see the module docstring."""
    qn_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], qn_desc.layout)
    qr_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, R], qr_desc.layout)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [NUM_BUF * BPP, BLOCK_N, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [NUM_BUF * BPP, BLOCK_N, DV], v_desc.layout)
    kr_smem = gl.allocate_shared_memory(gl.bfloat16, [NUM_BUF, BLOCK_N, R], kr_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_bar = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    mbarrier.init(q_bar, count=1)
    for s in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1 + SPLIT)  # every consumer partition releases
    fence_async_shared()

    if SPLIT:  # one partition per warpgroup: each drifts on its own (FA3's ping-pong, unforced)
        gl.warp_specialize(
            [(_consumer, (qn_smem, qr_smem, k_smem, v_smem, kr_smem, q_bar, ready, empty,
                          o_ptr, lse_ptr, T, H, NB, n_rows, qk_scale, out_scale, BLOCK_M,
                          BLOCK_N, DV, BPP, NUM_BUF, OVERLAP, WARPS, BLOCK_M // 2, 0)),
             (_consumer, (qn_smem, qr_smem, k_smem, v_smem, kr_smem, q_bar, ready, empty,
                          o_ptr, lse_ptr, T, H, NB, n_rows, qk_scale, out_scale, BLOCK_M,
                          BLOCK_N, DV, BPP, NUM_BUF, OVERLAP, WARPS, BLOCK_M // 2, 1)),
             (_producer, (qn_desc, qr_desc, k_desc, v_desc, kr_desc, qn_smem, qr_smem, k_smem,
                          v_smem, kr_smem, q_bar, ready, empty, T, H, HKV, NB, BLOCK_M,
                          BLOCK_N, D, DV, R, BPP, NUM_BUF))],
            [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize(
            [(_consumer, (qn_smem, qr_smem, k_smem, v_smem, kr_smem, q_bar, ready, empty,
                          o_ptr, lse_ptr, T, H, NB, n_rows, qk_scale, out_scale, BLOCK_M,
                          BLOCK_N, DV, BPP, NUM_BUF, OVERLAP, WARPS, BLOCK_M, 0)),
             (_producer, (qn_desc, qr_desc, k_desc, v_desc, kr_desc, qn_smem, qr_smem, k_smem,
                          v_smem, kr_smem, q_bar, ready, empty, T, H, HKV, NB, BLOCK_M,
                          BLOCK_N, D, DV, R, BPP, NUM_BUF))],
            [1], [PRODUCER_REGS])

    mbarrier.invalidate(q_bar)
    for s in gl.static_range(NUM_BUF):
        mbarrier.invalidate(ready.index(s))
        mbarrier.invalidate(empty.index(s))
