"""The resident one-row projection (:mod:`mlra.kernels.gluon_skinny`) with its dot products on
the tensor cores (``mma.sync``, m16n8k16) instead of fp32 FMAs: the same contract, weights
fetched into shared memory before the PDL wait, selected by ``ResidentConfig(products="mma")``.

Why: the FMA form's products take 1.4-1.7 us after the release for 48-64 KB of weights per
program (``results/h200/resident``), bound by instruction issue and shared-memory latency (ncu
stall sampling, ``results/h200/products``): each weight element costs a share of a
shared-memory load, a bf16 -> fp32 conversion and an FMA.
On the tensor cores one instruction takes 256 weights.

How one row becomes a matrix product: the inputs are cut into ``S`` segments of ``K' = K /
S``; the weight ``W [N, K]`` is read as ``W' [S N, K']`` (row ``S r + q`` is segment ``q`` of
row ``r``: the same memory), and the input as ``X [K', 2 S]`` with columns ``2 q`` and ``2 q +
1`` the high and low bf16 parts of segment ``q`` of ``x * g`` (``x * g = hi + lo`` to about 16
bits). Then ``D = W' X`` holds in row ``S r + q``, columns ``2 q`` and ``2 q + 1``, segment
``q``'s share of output ``r``; the kernel sums those ``2 S`` values per output. Products of
bf16 values are exact and accumulate in fp32, so the result matches the FMA form to within
fp32 rounding and the 2^-17 of the split input. ``S = max(4, 64 / BLOCK_N)`` gives every
program at least 64 rows of ``W'``: four warps of 16 or more rows each.

Layout: each program owns ``BLOCK_N`` outputs, i.e. ``M = S BLOCK_N`` rows of ``W'``, fetched
as TMA boxes ``[M, 64]`` (128-byte swizzle, read back with ``ldmatrix`` without bank
conflicts), grouped under at most four mbarriers; ``X`` is staged in shared memory in bf16
after the wait.

Import only after checking :func:`mlra.kernels.gluon_available`.
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from mlra.kernels.gluon_skinny import _enter, _mark, _prefetch_next, _program_tile, _store_outputs

CHUNK = 64  # inputs of W' per TMA box row: 128 bytes, one swizzle row
MAX_GROUPS = 4  # mbarrier groups of boxes (one shared-memory allocation each)


NUM_WARPS = 4


def segments(block_n: int) -> int:
    """Segments ``S`` the inputs are cut into for ``block_n`` outputs per program: at least
    four, and enough for 64 rows of ``W'`` (one 16-row tile per warp)."""
    return max(4, 64 // block_n)


def chunk_groups(K: int, block_n: int) -> tuple[int, int] | None:
    """``(boxes per group, groups)``: ``K / (64 S)`` boxes of 64 columns of ``W'`` in at most
    :data:`MAX_GROUPS` groups of a power-of-two size; None where ``K`` is not a multiple of
    ``64 S`` or no such grouping exists."""
    seg = segments(block_n)
    if K <= 0 or K % (CHUNK * seg):
        return None
    chunks = K // (CHUNK * seg)
    cb = 1
    while chunks % (2 * cb) == 0 and chunks // cb > MAX_GROUPS:
        cb *= 2
    if chunks // cb > MAX_GROUPS:
        return None
    return cb, chunks // cb


def x_bytes(K: int, block_n: int) -> int:
    """Shared memory of the staged input ``X [K' (padded to a power of two), 2 S]``, bf16."""
    seg = segments(block_n)
    return triton.next_power_of_2(K // seg) * 2 * seg * 2


@gluon.jit
def _issue_group(desc, row0, s, bar, g: gl.constexpr, CB: gl.constexpr, M: gl.constexpr):
    """TMA loads of boxes ``g * CB ..`` (columns ``64 j`` of ``W'``, rows ``row0 ..``) into
    ``s``, all signalling ``bar``."""
    mbarrier.expect(bar, CB * M * 64 * 2)
    for j in gl.static_range(CB):
        tma.async_copy_global_to_shared(desc, [row0, (g * CB + j) * 64], bar, s.index(j))


@gluon.jit
def _issue_all(desc, row0, s0, s1, s2, s3, bars, CB: gl.constexpr, NG: gl.constexpr,
               M: gl.constexpr):
    _issue_group(desc, row0, s0, bars.index(0), 0, CB, M)
    if NG > 1:
        _issue_group(desc, row0, s1, bars.index(1), 1, CB, M)
    if NG > 2:
        _issue_group(desc, row0, s2, bars.index(2), 2, CB, M)
    if NG > 3:
        _issue_group(desc, row0, s3, bars.index(3), 3, CB, M)


@gluon.jit
def _group_products(s, xb_smem, acc0, acc1, g: gl.constexpr, CB: gl.constexpr,
                    a_layout: gl.constexpr, b_layout: gl.constexpr):
    """``acc += W'[:, box] X[box]`` for the boxes of group ``g``, alternating two accumulators
    so that consecutive tensor-core products do not wait on each other."""
    for j in gl.static_range(CB):
        a = s.index(j).load(a_layout)
        b = xb_smem.slice((g * CB + j) * 64, 64).load(b_layout)
        if (g * CB + j) % 2 == 0:
            acc0 = mma_v2(a, b, acc0)
        else:
            acc1 = mma_v2(a, b, acc1)
    return acc0, acc1


@gluon.jit
def _resident_mma_kernel(
    x_ptr, g_ptr, res_ptr, d1, d2, d3, o1_ptr, o2_ptr, o3_ptr,
    K, N1, N2, N3, T1, T2, eps, in_scale,
    NUM_W: gl.constexpr, HAS_NORM: gl.constexpr, HAS_RES: gl.constexpr,
    BLOCK_N: gl.constexpr, SEG: gl.constexpr, CB: gl.constexpr, NG: gl.constexpr,
    KQ_PAD: gl.constexpr,
    PDL: gl.constexpr, trace_ptr=None, EARLY_TRIGGER: gl.constexpr = 1,
    nx1=None, nx2=None, nx3=None, NX_ROWS=0, NX_PARTS=1, NX_UNITS=0, NX_WIDTH=0,
    NUM_NX: gl.constexpr = 0,
):
    """Program ``p`` computes outputs ``t * BLOCK_N ..`` of the weight its tile ``p`` belongs
    to (tiles of weight 1, then 2, then 3); see the module docstring."""
    _mark(trace_ptr, 0)
    dtype: gl.constexpr = d1.dtype
    M: gl.constexpr = SEG * BLOCK_N
    NW: gl.constexpr = gl.num_warps()
    wl: gl.constexpr = d1.layout
    s0 = gl.allocate_shared_memory(dtype, [CB, M, 64], wl)
    s1 = gl.allocate_shared_memory(dtype, [CB if NG > 1 else 1, M, 64], wl)
    s2 = gl.allocate_shared_memory(dtype, [CB if NG > 2 else 1, M, 64], wl)
    s3 = gl.allocate_shared_memory(dtype, [CB if NG > 3 else 1, M, 64], wl)
    xb_smem = gl.allocate_shared_memory(dtype, [KQ_PAD, 2 * SEG],
                                        gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    bars = gl.allocate_shared_memory(gl.int64, [NG, 1], mbarrier.MBarrierLayout())
    for b in gl.static_range(NG):
        mbarrier.init(bars.index(b), count=1)
    fence_async_shared()

    # the weights, which no kernel of the step writes: every box in flight before the wait
    pid = gl.program_id(0)
    wi, t, n_out, o_ptr = _program_tile(pid, T1, T2, N1, N2, N3, o1_ptr, o2_ptr, o3_ptr, NUM_W)
    if wi == 0:
        _issue_all(d1, t * M, s0, s1, s2, s3, bars, CB, NG, M)
    elif wi == 1:
        _issue_all(d2, t * M, s0, s1, s2, s3, bars, CB, NG, M)
    else:
        _issue_all(d3, t * M, s0, s1, s2, s3, bars, CB, NG, M)

    # X [K', 2 S]: segment q of x (times g) in columns 2q (high bf16 part) and 2q + 1 (low);
    # each thread 8 consecutive inputs of a segment (16-byte loads)
    KQ = K // SEG
    xl: gl.constexpr = gl.BlockedLayout([8, 1], [4, 8], [NW, 1], [0, 1])
    kk = gl.arange(0, KQ_PAD, gl.SliceLayout(1, xl))
    qq = gl.arange(0, SEG, gl.SliceLayout(0, xl))
    offs = qq[None, :] * KQ + kk[:, None]
    ok = (kk < KQ)[:, None] & (qq < SEG)[None, :]
    if HAS_NORM:  # a weight too
        g = gl.load(g_ptr + offs, mask=ok, other=0.0).to(gl.float32)
    _enter(PDL, EARLY_TRIGGER)
    _mark(trace_ptr, 1)
    x = gl.load(x_ptr + offs, mask=ok, other=0.0).to(dtype).to(gl.float32)
    ss = 0.0
    if HAS_NORM:
        ss = gl.sum(gl.sum(x * x, 0), 0)  # along the inputs first: few shuffles
        x = x * g
    hi = x.to(dtype)
    lo = (x - hi.to(gl.float32)).to(dtype)
    xb_smem.store(gl.reshape(gl.join(hi, lo), [KQ_PAD, 2 * SEG]))
    gl.thread_barrier()

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1],
                                                  instr_shape=[16, 8])
    a_layout: gl.constexpr = gl.DotOperandLayout(0, mma, 2)
    b_layout: gl.constexpr = gl.DotOperandLayout(1, mma, 2)
    acc0 = gl.zeros([M, 2 * SEG], gl.float32, mma)
    acc1 = gl.zeros([M, 2 * SEG], gl.float32, mma)
    mbarrier.wait(bars.index(0), 0)
    acc0, acc1 = _group_products(s0, xb_smem, acc0, acc1, 0, CB, a_layout, b_layout)
    if NG > 1:
        mbarrier.wait(bars.index(1), 0)
        acc0, acc1 = _group_products(s1, xb_smem, acc0, acc1, 1, CB, a_layout, b_layout)
    if NG > 2:
        mbarrier.wait(bars.index(2), 0)
        acc0, acc1 = _group_products(s2, xb_smem, acc0, acc1, 2, CB, a_layout, b_layout)
    if NG > 3:
        mbarrier.wait(bars.index(3), 0)
        acc0, acc1 = _group_products(s3, xb_smem, acc0, acc1, 3, CB, a_layout, b_layout)
    if NUM_NX > 0:  # every box has landed: this launch's DRAM traffic is done
        _prefetch_next(pid, nx1, nx2, nx3, NX_ROWS, NX_PARTS, NX_UNITS, NX_WIDTH, NUM_NX)
    acc = acc0 + acc1
    rows = gl.arange(0, M, gl.SliceLayout(1, mma))
    cols = gl.arange(0, 2 * SEG, gl.SliceLayout(0, mma))
    own = (cols // 2)[None, :] == (rows % SEG)[:, None]  # row S r + q: segment q's columns
    out = gl.sum(gl.reshape(gl.sum(gl.where(own, acc, 0.0), 1), [BLOCK_N, SEG]), 1)
    _mark(trace_ptr, 2)
    _store_outputs(out, ss, K, eps, in_scale, res_ptr, o_ptr, t, n_out, BLOCK_N, HAS_NORM,
                   HAS_RES)
    for b in gl.static_range(NG):
        mbarrier.invalidate(bars.index(b))
    _mark(trace_ptr, 3)


def weight_layout() -> gl.NVMMASharedLayout:
    """Shared layout of the ``[M, 64]`` boxes of ``W'`` (128-byte swizzle)."""
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


def descriptor(w, block_n: int):
    """TMA descriptor of ``w [N, K]`` read as ``W' [S N, K / S]`` in boxes ``[S block_n,
    64]``."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    n, k = w.shape
    seg = segments(block_n)
    return TensorDescriptor(w, [seg * n, k // seg], [k // seg, 1], [seg * block_n, CHUNK],
                            weight_layout())


def launch_consts(K: int, block_n: int) -> dict:
    """The constexprs (and warps) of a launch for ``K`` inputs, ``block_n`` outputs per
    program (a shape :func:`chunk_groups` takes)."""
    cb, ng = chunk_groups(K, block_n)
    seg = segments(block_n)
    return dict(BLOCK_N=block_n, SEG=seg, CB=cb, NG=ng,
                KQ_PAD=triton.next_power_of_2(K // seg), num_warps=NUM_WARPS)
