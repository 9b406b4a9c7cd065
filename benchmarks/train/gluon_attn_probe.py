"""Feasibility probe: causal training attention (forward) of the latent family in Gluon, with
explicit warp specialisation for Hopper (sm_90).

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

Modes: ``--compile-sm90`` (no GPU: compiles for sm_90 with Triton's bundled ptxas and reports
registers, spills, shared memory, PTX checks; ``--sweep`` for a table of configurations),
``--check`` and ``--bench`` (need an sm_90 GPU; exit code 2 without one).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from typing import Any

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from mlra.kernels.aot import clean, compile_gluon_sm90, format_hopper_summary, hopper_summary

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
            slot = i % NUM_BUF
            n0 = i * BLOCK_N
            masked = n0 + BLOCK_N - 1 > m0
            s = warpgroup_mma_wait(0, deps=[tok])
            s_r, tok = _next_scores(i, 0, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem, kr_smem,
                                    ready, s_zero, BPP, NUM_BUF, True)
            m_a, l_a, acc_a = _softmax_pv(s, v_smem.index(slot * BPP), m_a, l_a, acc_a, masked,
                                          n0, rows, cols, T, qk_scale, row_o, p_layout)
            if BPP > 1:
                s = warpgroup_mma_wait(0, deps=[tok])
                s_r, tok = _next_scores(i, 1, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem,
                                        kr_smem, ready, s_zero, BPP, NUM_BUF, True)
                m_b, l_b, acc_b = _softmax_pv(s, v_smem.index(slot * BPP + 1), m_b, l_b, acc_b,
                                              masked, n0, rows, cols, T, qk_scale, row_o,
                                              p_layout)
            mbarrier.arrive(empty.index(slot), count=1)
        # the last tile: no prefetch past it
        i = n_tiles - 1
        slot = i % NUM_BUF
        n0 = i * BLOCK_N
        masked = n0 + BLOCK_N - 1 > m0
        s = warpgroup_mma_wait(0, deps=[tok])
        s_r, tok = _next_scores(i, 0, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem, kr_smem,
                                ready, s_zero, BPP, NUM_BUF, False)
        m_a, l_a, acc_a = _softmax_pv(s, v_smem.index(slot * BPP), m_a, l_a, acc_a, masked,
                                      n0, rows, cols, T, qk_scale, row_o, p_layout)
        if BPP > 1:
            s = warpgroup_mma_wait(0, deps=[tok])
            s_r, tok = _next_scores(i, 1, n_tiles, s_r, tok, qn_smem, qr_smem, k_smem,
                                    kr_smem, ready, s_zero, BPP, NUM_BUF, False)
            m_b, l_b, acc_b = _softmax_pv(s, v_smem.index(slot * BPP + 1), m_b, l_b, acc_b,
                                          masked, n0, rows, cols, T, qk_scale, row_o, p_layout)
        mbarrier.arrive(empty.index(slot), count=1)
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


# ------------------------------------------------------------------------------------------
# host side
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Compile-time parameters: problem widths, branch count, tile rows, ring depth, branches
    per program, score overlap."""

    nb: int = 4
    block_n: int = 64
    num_buf: int = 2
    bpp: int = 2
    overlap: bool = False
    #: one consumer partition per warpgroup (each its 64 query rows) instead of one for both
    split: bool = False
    d: int = 128
    dv: int = 128
    r: int = 64

    @property
    def chunks(self) -> int:
        """Branch chunks (programs per (batch, head, query block))."""
        return self.nb // self.bpp

    def blocks(self) -> dict[str, list[int]]:
        """TMA block shapes (powers of two: NoPE / RoPE and keys / values are separate)."""
        return {"qn": [BLOCK_M, self.d], "qr": [BLOCK_M, self.r], "k": [self.block_n, self.d],
                "v": [self.block_n, self.dv], "kr": [self.block_n, self.r]}

    def layouts(self) -> dict[str, Any]:
        """Shared layouts of the blocks (128-byte swizzle for bf16)."""
        return {k: gl.NVMMASharedLayout.get_default_for(v, gl.bfloat16)
                for k, v in self.blocks().items()}

    def smem_estimate(self) -> int:
        """Bytes of the buffers (query block + ring), without barriers and compiler scratch."""
        q = BLOCK_M * (self.d + self.r) * 2
        stage = (self.bpp * (self.d + self.dv) + self.r) * self.block_n * 2
        return q + self.num_buf * stage

    def consts(self) -> dict[str, int]:
        """The kernel's constexpr arguments."""
        return {"BLOCK_M": BLOCK_M, "BLOCK_N": self.block_n, "D": self.d, "DV": self.dv,
                "R": self.r, "BPP": self.bpp, "NUM_BUF": self.num_buf,
                "OVERLAP": int(self.overlap), "WARPS": self.warps,
                "PRODUCER_REGS": PRODUCER_REGS, "SPLIT": int(self.split),
                "CONSUMER_REGS": CONSUMER_REGS}

    @property
    def warps(self) -> int:
        """Warps of the launch's default partition: both consumer warpgroups, or one."""
        return CONSUMER_WARPS // (2 if self.split else 1)

    def __str__(self) -> str:
        return (f"NB={self.nb} BLOCK_N={self.block_n} NUM_BUF={self.num_buf} "
                f"BPP={self.bpp} OVERLAP={int(self.overlap)}"
                + (" SPLIT=1" if self.split else ""))


def _validate(cfg: Config) -> None:
    if cfg.nb % cfg.bpp or cfg.bpp not in (1, 2):
        raise ValueError(f"BPP must be 1 or 2 and divide NB; got {cfg}")
    if BLOCK_M % cfg.block_n:
        raise ValueError("BLOCK_N must divide BLOCK_M (diagonal tiles)")
    if cfg.num_buf < 2:
        raise ValueError("NUM_BUF must be at least 2 (OVERLAP waits for tile i + 1 while it "
                         "holds tile i's slot)")


#: configurations compiled by ``--compile-sm90 --sweep`` (the first is the default)
SWEEP = tuple(
    Config(nb=nb, block_n=bn, num_buf=nbuf, bpp=bpp, overlap=ov)
    for nb, bpp in ((4, 2), (1, 1), (4, 1))
    for ov in (False, True)
    for bn in (32, 64, 128)
    for nbuf in (2, 3)
)


#: configurations timed by ``--bench`` without explicit tile options: those of the sweep that
#: compile without spills within shared memory and look most promising
BENCH = (
    Config(nb=4, block_n=64, num_buf=2, bpp=2),
    Config(nb=4, block_n=32, num_buf=3, bpp=2, overlap=True),
    Config(nb=4, block_n=128, num_buf=2, bpp=1),
    Config(nb=4, block_n=64, num_buf=3, bpp=1, overlap=True),
    Config(nb=1, block_n=128, num_buf=2, bpp=1),
    Config(nb=1, block_n=128, num_buf=2, bpp=1, overlap=True),
    Config(nb=1, block_n=64, num_buf=3, bpp=1, overlap=True),
    Config(nb=4, block_n=128, num_buf=2, bpp=1, split=True),
    Config(nb=4, block_n=64, num_buf=2, bpp=2, split=True),
    Config(nb=1, block_n=128, num_buf=2, bpp=1, split=True),
    Config(nb=1, block_n=128, num_buf=2, bpp=1, overlap=True, split=True),
)


def compile_sm90(cfg: Config) -> Any:
    """``_latent_train_fwd_ws`` compiled for sm_90 without a GPU (Triton's bundled ptxas)."""
    _validate(cfg)
    layouts, blocks = cfg.layouts(), cfg.blocks()
    types = {f"{k}_desc": f"tensordesc<bf16{blocks[k]},{layouts[k]!r}>" for k in blocks}
    types.update(o_ptr="*bf16" if cfg.chunks == 1 else "*fp32", lse_ptr="*fp32",
                 qk_scale="fp32", out_scale="fp32")
    return compile_gluon_sm90(_latent_train_fwd_ws, types, cfg.consts(),
                              aligned=("o_ptr", "lse_ptr"), num_warps=cfg.warps)


def compile_summary(cfg: Config) -> dict[str, Any]:
    """Compile one configuration: :func:`mlra.kernels.aot.hopper_summary` of it, or
    ``{"error": ...}`` on a compiler failure."""
    try:
        return hopper_summary(compile_sm90(cfg))
    except Exception as e:  # a probe: report any compiler failure
        msg = str(e).strip().splitlines()
        return {"error": f"{type(e).__name__}: {' | '.join(msg[-6:])[:1500]}"}


def report_compile(cfg: Config) -> bool:
    """Compile one configuration and print what the compiler made of it; True if it compiled
    without spills and fits sm_90's shared memory."""
    res = compile_summary(cfg)
    if "error" in res:
        print(f"[{cfg}] FAILED: {res['error']}")
        return False
    print(f"[{cfg}] compiled OK (buffers {cfg.smem_estimate()} bytes)")
    print("\n".join(format_hopper_summary(res)))
    return clean(res)


def sweep_table(configs: tuple[Config, ...]) -> bool:
    """Compile ``configs``; print one row each. True if the first compiled cleanly."""
    print(f"{'config':<48} {'status':<10} {'regs':>5} {'sass':>5} {'spill st/ld':>12} "
          f"{'smem':>7} {'fits':>5}")
    first_ok = False
    for n, cfg in enumerate(configs):
        res = compile_summary(cfg)
        if "error" in res:
            print(f"{str(cfg):<48} {'FAILED':<10} {res['error'][:200]}")
            continue
        first_ok |= n == 0 and clean(res)
        print(f"{str(cfg):<48} {'ok' if clean(res) else 'compiled':<10} {res['registers']:>5} "
              f"{res['sass_regs']!s:>5} {res['spill_stores']:>5}/{res['spill_loads']:<6} "
              f"{res['shared']:>7} {'yes' if res['fits'] else 'NO':>5}")
    return first_ok


# ------------------------------------------------------------------------------------------
# GPU: launch, check, bench
# ------------------------------------------------------------------------------------------
def attention(q_nope: Any, q_rope: Any, kv: Any, k_rope: Any, scale: float, out_scale: float,
              cfg: Config, reduce: bool = True) -> tuple[Any, Any]:
    """Run the probe kernel: ``(out [B, T, H, Dv] bf16, lse [B, NB, H, T] fp32, log2)``.
    Inputs contiguous bf16 with ``cfg``'s widths; several branch chunks are summed in torch
    (with ``reduce=False`` the fp32 partials ``[chunks, B, T, H, Dv]`` are returned instead)."""
    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    B, T, H, D = q_nope.shape
    NB, HKV = kv.shape[2], kv.shape[3]
    R, DV = q_rope.shape[-1], kv.shape[-1] - D
    if (NB, D, DV, R) != (cfg.nb, cfg.d, cfg.dv, cfg.r) or H % HKV:
        raise ValueError(f"shapes {tuple(kv.shape)} do not match {cfg}")
    _validate(cfg)
    for t in (q_nope, q_rope, kv, k_rope):
        if t.dtype != torch.bfloat16 or not t.is_contiguous():
            raise ValueError("inputs must be contiguous bf16")
    layouts, blocks = cfg.layouts(), cfg.blocks()
    kv2 = kv.view(B * T, NB * HKV * (D + DV))
    src = {"qn": q_nope.view(B * T, H * D), "qr": q_rope.view(B * T, H * R), "k": kv2,
           "v": kv2, "kr": k_rope.view(B * T, R)}
    descs = [TensorDescriptor.from_tensor(src[k], blocks[k], layouts[k]) for k in blocks]
    nc = cfg.chunks
    dev = q_nope.device
    if nc == 1:
        o = torch.empty(B, T, H, DV, dtype=torch.bfloat16, device=dev)
    else:
        o = torch.empty(nc, B, T, H, DV, dtype=torch.float32, device=dev)
    lse = torch.empty(B, NB, H, T, dtype=torch.float32, device=dev)
    grid = (B * H * nc, (T + BLOCK_M - 1) // BLOCK_M)
    _latent_train_fwd_ws[grid](*descs, o, lse, T, H, HKV, NB, B * T, scale * LOG2E, out_scale,
                               **cfg.consts(), num_warps=cfg.warps)
    if nc > 1 and reduce:
        o = o.sum(0).to(torch.bfloat16)
    return o, lse


def _inputs(B: int, T: int, H: int, HKV: int, cfg: Config, seed: int = 0) -> tuple[Any, ...]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape: int) -> Any:
        return torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)

    return (rnd(B, T, H, cfg.d), rnd(B, T, H, cfg.r), rnd(B, T, cfg.nb, HKV, cfg.d + cfg.dv),
            rnd(B, T, cfg.r))


def _ref_lse2(q_nope: Any, q_rope: Any, kv: Any, k_rope: Any, scale: float) -> Any:
    """Per-branch LSE in the log2 domain ``[B, NB, H, T]`` (fp32): ``log2(sum exp(scale *
    logits))``, the quantity the Triton forward stores (``m + log2(l)`` of the logits times
    ``scale * log2(e)``). The reference returns no LSE, so it is computed here the same way."""
    import torch

    D = q_nope.shape[-1]
    T, H = q_nope.shape[1], q_nope.shape[2]
    kv = kv.float().repeat_interleave(H // kv.shape[3], dim=3)
    logits = torch.einsum("bthd,bsnhd->bnhts", q_nope.float(), kv[..., :D])
    logits = logits + torch.einsum("bthr,bsr->bhts", q_rope.float(), k_rope.float())[:, None]
    keep = torch.ones(T, T, dtype=torch.bool, device=q_nope.device).tril()
    logits = (logits * scale).masked_fill(~keep, float("-inf"))
    return torch.logsumexp(logits, dim=-1) * LOG2E


def check_one(cfg: Config, B: int, T: int, H: int, HKV: int) -> bool:
    """One shape against the fp32 reference: max relative error of out and of the LSE."""
    import torch

    from mlra.kernels.reference import latent_train_attention_ref

    qn, qr, kv, kr = _inputs(B, T, H, HKV, cfg)
    scale = 1.0 / math.sqrt(cfg.d + cfg.r)
    out_scale = 1.0 / cfg.nb
    o, lse = attention(qn, qr, kv, kr, scale, out_scale, cfg)
    torch.cuda.synchronize()
    ref_o = latent_train_attention_ref(qn.float(), qr.float(), kv.float(), kr.float(), scale,
                                       out_scale)
    ref_l = _ref_lse2(qn, qr, kv, kr, scale)
    err_o = ((o.float() - ref_o).abs().max() / ref_o.abs().max()).item()
    err_l = ((lse - ref_l).abs().max() / ref_l.abs().max()).item()
    finite = bool(torch.isfinite(o).all() and torch.isfinite(lse).all())
    ok = finite and err_o < 2e-2 and err_l < 1e-3
    print(f"check [{cfg}] B={B} T={T} H={H} Hkv={HKV}: max rel err out {err_o:.3e}, "
          f"lse {err_l:.3e}, finite {finite} -> {'PASS' if ok else 'FAIL'}")
    return ok


def check(cfg: Config) -> bool:
    """``cfg`` at T = 1024 and an odd T (1001), MHA and GQA (H=4, Hkv=2)."""
    ok = True
    for B, T, H, HKV in ((1, 1024, 4, 4), (1, 1001, 4, 4), (2, 1001, 4, 2)):
        try:
            ok &= check_one(cfg, B, T, H, HKV)
        except Exception as e:  # a probe: report and go on
            print(f"check [{cfg}] B={B} T={T} H={H} Hkv={HKV}: ERROR {type(e).__name__}: {e}")
            ok = False
    return ok


def _time(fn: Any, iters: int) -> float:
    """Mean milliseconds per call of ``fn`` (CUDA events, after warm-up)."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench(cfg: Config, B: int = 4, T: int = 2048, H: int = 16, iters: int = 20) -> None:
    """Time the probe and :func:`mlra.kernels.triton_latent_train.forward` at one shape;
    TFLOP/s of useful FLOPs (causal half, RoPE scores once per tile)."""
    from mlra.kernels import triton_latent_train

    assert T % BLOCK_M == 0, "bench T must be a multiple of BLOCK_M"
    qn, qr, kv, kr = _inputs(B, T, H, H, cfg)
    scale = 1.0 / math.sqrt(cfg.d + cfg.r)
    out_scale = 1.0 / cfg.nb
    pairs = B * H * T * T / 2
    flops = 2 * pairs * (cfg.nb * cfg.d + cfg.r) + 2 * pairs * cfg.nb * cfg.dv
    ms = _time(lambda: attention(qn, qr, kv, kr, scale, out_scale, cfg), iters)
    print(f"bench gluon  [{cfg}] B={B} T={T} H={H}: {ms * 1e3:.1f} us, "
          f"{flops / ms / 1e9:.1f} TFLOP/s (host descriptor creation"
          f"{' and the torch chunk sum' if cfg.chunks > 1 else ''} included)")
    if cfg.chunks > 1:
        ms_k = _time(lambda: attention(qn, qr, kv, kr, scale, out_scale, cfg, reduce=False),
                     iters)
        print(f"bench gluon  [{cfg}] without the chunk sum: {ms_k * 1e3:.1f} us, "
              f"{flops / ms_k / 1e9:.1f} TFLOP/s")
    ms_t = _time(lambda: triton_latent_train.forward(qn, qr, kv, kr, scale, out_scale), iters)
    print(f"bench triton [NB={cfg.nb} default config] B={B} T={T} H={H}: {ms_t * 1e3:.1f} us, "
          f"{flops / ms_t / 1e9:.1f} TFLOP/s (also stores per-branch outputs when NB > 1) "
          f"-> gluon/triton time {ms / ms_t:.2f}x")


def _have_sm90() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--compile-sm90 [--sweep]`` / ``--check`` / ``--bench``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-sm90", action="store_true", help="compile for sm_90 (no GPU)")
    ap.add_argument("--sweep", action="store_true",
                    help="with --compile-sm90: table of the SWEEP configurations; with "
                         "--check: check every SWEEP configuration that compiles cleanly")
    ap.add_argument("--check", action="store_true", help="compare with the reference (sm_90)")
    ap.add_argument("--bench", action="store_true", help="time NB=4 and NB=1 (sm_90)")
    ap.add_argument("--nb", type=int, default=4, help="branches (compile / check)")
    ap.add_argument("--block-n", type=int, default=None,
                    help="key tile rows (default: 64 with BPP > 1, else 128)")
    ap.add_argument("--num-buf", type=int, default=2)
    ap.add_argument("--bpp", type=int, default=None,
                    help="branches per program (default: 2 for an even NB, else 1)")
    ap.add_argument("--overlap", action="store_true",
                    help="issue the next score wgmma before this branch's softmax")
    ap.add_argument("--split", action="store_true",
                    help="one consumer partition per warpgroup (64 query rows each)")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    if not (args.compile_sm90 or args.check or args.bench):
        ap.error("give --compile-sm90, --check and/or --bench")

    def cfg_for(nb: int) -> Config:
        bpp = min(args.bpp or (2 if nb % 2 == 0 else 1), nb)
        return Config(nb=nb, block_n=args.block_n or (64 if bpp > 1 else 128),
                      num_buf=args.num_buf, bpp=bpp, overlap=args.overlap, split=args.split)

    explicit = ((args.block_n, args.bpp) != (None, None) or args.num_buf != 2 or args.overlap
                or args.split)

    ok = True
    if args.compile_sm90:
        if args.sweep:
            ok &= sweep_table(SWEEP)
        else:
            ok &= report_compile(cfg_for(args.nb))
    if args.check or args.bench:
        if not _have_sm90():
            print("--check / --bench need an sm_90 (Hopper) GPU; none found", file=sys.stderr)
            return 2
    if args.check:
        if args.sweep:
            for cfg in SWEEP:
                res = compile_summary(cfg)
                if "error" in res or not clean(res):
                    print(f"check [{cfg}]: skipped (does not compile cleanly)")
                    continue
                ok &= check(cfg)
        elif explicit:
            ok &= check(cfg_for(args.nb))
            if args.nb != 1:
                ok &= check(replace(cfg_for(1), bpp=1))
        else:
            for cfg in BENCH:
                ok &= check(cfg)
    if args.bench:
        for cfg in (cfg_for(4), cfg_for(1)) if explicit else BENCH:
            try:
                bench(cfg, iters=args.iters)
            except Exception as e:  # a probe: report and go on
                print(f"bench [{cfg}]: ERROR {type(e).__name__}: {e}")
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
