"""Hopper one-row projections whose weights are fetched into shared memory before the previous
kernel finishes: ``x @ W.T`` for a single row ``x`` (batch-1 decode steps), written in Gluon.

Same contract as :func:`mlra.kernels.triton_skinny.skinny_linear_triton` for one row and no
SwiGLU (an optional RMSNorm of ``x`` times a scale, up to three weights reading the same
input, a residual), for weights that fit, all together, in the shared memory of the GPU
(:func:`resident_plan`: the attention projections of the paper-size models, not the LM head
or the MLP).

Why: under programmatic dependent launch a projection starts while the kernel before it (which
writes ``x``) still runs. The Triton kernel prefetches its weights into L2 before its wait and
then still spends 4-6 us after it on a 10-19 MB projection (loads from L2 one tile after the
other, a split-K reduction): ``benchmarks/e2e_decode/results/h200/trace_ninth``. Here every
program owns ``BLOCK_N`` whole rows of one weight (no split-K) and, before its wait, puts the
TMA loads of all of them in flight into its shared memory: the weight viewed as ``[rows, K /
256, 256]``, boxes of ``[BLOCK_N, CB, 256]`` (``CB`` chunks of 256 inputs, 16 KB for 8 rows of
4 chunks), one mbarrier each. After the wait it reads ``x`` once (the RMS statistic over all
of ``K``, ``x * g`` staged in shared memory in fp32), runs dot products out of shared memory
as the boxes land, and writes its outputs: no reduction across programs, no second pass.

It lets the next launch start at its entry, once its own weight loads are issued (before its
wait), so the next projection's programs and loads follow this one's as early as PDL allows
(a launch's successor starts only once it has been released itself). Where the time goes in
the paper-size MLRA-4 step at 1 x 8K (H200, ``results/h200/products``): the q/kv down weights
land ~1.3 us before the release, the query up's ~0.5 us before; the output projection's 18.9
MB, requested only once W_UV is released, about 1 us after its release (median).

Numerics as the Triton kernel's one-row path: ``x`` rounded to the weights' dtype, the norm's
statistic and ``x * g`` in fp32, fp32 dot products, the output in the weights' dtype.

Import only after checking :func:`mlra.kernels.gluon_available`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from mlra.kernels._triton_common import (
    config_from_env,
    device_sms,
    env_choice,
    env_switch,
    pdl_mode,
    sm_limits,
)
from mlra.kernels.gluon_latent import _gdc_launch_dependents, _gdc_wait
from mlra.kernels.hints import NextReads
from mlra.kernels.kernel_trace import trace_slot

BOX_K = 256  # inputs per TMA box (the most one box dimension takes)
BOX = gl.constexpr(BOX_K)
NUM_WARPS = 4
MAX_CHUNKS = 32  # inputs up to 8192
MAX_BOX_CHUNKS = 4  # 16 KB boxes of 8 rows (the default; ResidentConfig.box_chunks)
CTA_RESERVE = 2048  # per block: the driver's 1 KB and the compiler's reduction scratch
BLOCK_NS = (32, 16, 8, 4)  # rows per program the plan considers

ENV = "MLRA_SKINNY_RESIDENT"
"""``0`` keeps one-row projections on the Triton kernel; unset or ``1`` (the default) sends
those that fit to this one on a Hopper GPU; anything else is refused by name. Read at every
call (a CUDA graph keeps what it captured)."""

DEFAULT_MAX_MB = 0.0
"""No cap by default. With one-chunk TMA boxes the output projection of the paper-size models
(18.9 MB) measured slower resident than on the Triton kernel inside the batch-1 step (its
shared memory keeps the MLP from starting beside it); with the 4-chunk boxes it measured
faster (H200, 8K: MLRA-4 2.014 -> 2.003 ms, MLA 2.024 -> 1.988, GQA 1.987 -> 1.985;
``benchmarks/e2e_decode/results/h200/resident``, calls 2 and 9)."""

CONFIG_ENV = "MLRA_RESIDENT_CONFIG"
"""Launch parameters as JSON (fields of :class:`ResidentConfig`, e.g. ``{"block_n": 8}``) for
every call without a ``config``: tuning runs of whole decode steps."""


DIAG_ENV = "MLRA_RESIDENT_DIAG"
"""Benchmarks: with a trace active, ``landed`` moves the third mark to where every weight box
has landed (waited for right after the PDL wait, before reading ``x``), ``x`` to where ``x``
is read, normed and staged, ``landed_before_wait`` to where every box has landed, waited for
before the PDL wait; unset: the mark follows the products."""
DIAG_MARKS = {"": 0, "landed": 1, "x": 2, "landed_before_wait": 3}
TRIGGERS = {"wait": 0, "entry": 1}  # ResidentConfig.trigger -> EARLY_TRIGGER
PRODUCTS = ("fma", "mma")  # ResidentConfig.products


@dataclasses.dataclass(frozen=True)
class ResidentConfig:
    """Launch parameters (``None``: :func:`resident_plan` chooses)."""

    #: weight rows per program (4, 8, 16 or 32)
    block_n: int | None = None
    #: most chunks of 256 inputs one TMA box covers (a power of two; see :func:`box_chunks`)
    box_chunks: int | None = None
    #: only calls whose weights hold at most this many megabytes (larger ones stay on the
    #: Triton kernel; 0 or less: no cap); unset: :data:`DEFAULT_MAX_MB`
    max_mb: float | None = None
    #: where the next launch is let start: ``"entry"`` (the default: before this one's PDL
    #: wait, once its weight loads are issued) or ``"wait"`` (right after the wait)
    trigger: str | None = None
    #: how the dot products run: ``"fma"`` (the default: fp32 FMAs) or ``"mma"`` (tensor
    #: cores, :mod:`mlra.kernels.gluon_skinny_mma`)
    products: str | None = None

    def __post_init__(self):
        if self.trigger is not None and self.trigger not in TRIGGERS:
            raise ValueError(f"trigger={self.trigger!r}: expected one of {sorted(TRIGGERS)}")
        if self.products is not None and self.products not in PRODUCTS:
            raise ValueError(f"products={self.products!r}: expected one of {PRODUCTS}")


@gluon.jit
def _mark(trace_ptr, MARK: gl.constexpr):
    """Mark ``MARK`` of :data:`mlra.kernels.kernel_trace.MARKS` for this program (a 1-D
    grid), as :func:`mlra.kernels._triton_common.trace_mark`; nothing without a trace."""
    if trace_ptr is not None:
        now = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64,
                                        is_pure=False, pack=1)
        gl.store(trace_ptr + gl.program_id(0).to(gl.int64) * 4 + MARK, now)


@gluon.jit
def _prefetch_l2_bulk(addr, nbytes):
    """One bulk L2 prefetch of ``nbytes`` (a multiple of 16) from ``addr``, by the program's
    first thread (a hint: it returns at once and never faults)."""
    gl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; } // $0",
        "=r,l,r", [addr, nbytes], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _prefetch_next(pid, nx1, nx2, nx3, NX_ROWS, NX_PARTS, NX_UNITS, NX_WIDTH,
                   NUM_NX: gl.constexpr):
    """The programs' share of the next launch's first reads into L2 (:class:`NextReads`):
    range ``r = pid, pid + grid, ..`` is matrix ``r // NX_PARTS``'s rows from ``p *
    NX_ROWS // NX_PARTS`` (``p = r % NX_PARTS``), at most ``NX_UNITS`` of them and not
    past part ``p``'s end."""
    for r in range(pid, NUM_NX * NX_PARTS, gl.num_programs(0)):
        m = r // NX_PARTS
        p = r % NX_PARTS
        row0 = p * NX_ROWS // NX_PARTS
        row1 = gl.minimum(row0 + NX_UNITS, (p + 1) * NX_ROWS // NX_PARTS)
        base = nx1
        if m == 1:
            base = nx2
        if m == 2:
            base = nx3
        _prefetch_l2_bulk(base + row0.to(gl.int64) * NX_WIDTH,
                          (row1 - row0) * NX_WIDTH * base.dtype.element_ty.primitive_bitwidth // 8)


@gluon.jit
def _program_tile(pid, T1, T2, N1, N2, N3, o1_ptr, o2_ptr, o3_ptr, NUM_W: gl.constexpr):
    """Which weight program ``pid`` works on (tiles of weight 1, then 2, then 3): ``(weight
    index, tile within it, the weight's rows, its output)``."""
    wi = 0
    t = pid
    n_out = N1
    o_ptr = o1_ptr
    if NUM_W > 1:
        if pid >= T1:
            wi = 1
            t = pid - T1
            n_out = N2
            o_ptr = o2_ptr
            if NUM_W == 3:
                if pid >= T1 + T2:
                    wi = 2
                    t = pid - T1 - T2
                    n_out = N3
                    o_ptr = o3_ptr
    return wi, t, n_out, o_ptr


@gluon.jit
def _enter(PDL: gl.constexpr, EARLY_TRIGGER: gl.constexpr):
    """The PDL wait for the previous launch, the next launch let start before it (``1``, at
    entry) or after it (``0``)."""
    if PDL:
        if EARLY_TRIGGER == 1:
            _gdc_launch_dependents()
        _gdc_wait()
        if EARLY_TRIGGER == 0:
            _gdc_launch_dependents()


@gluon.jit
def _store_outputs(out, ss, K, eps, in_scale, res_ptr, o_ptr, t, n_out,
                   BLOCK_N: gl.constexpr, HAS_NORM: gl.constexpr, HAS_RES: gl.constexpr):
    """Outputs ``t * BLOCK_N ..`` (``out``, fp32, any 1-D layout): the norm's scale
    (``ss``: the sum of the squared inputs), the residual, rounded to the output's dtype."""
    if HAS_NORM:
        out = out * (in_scale / gl.sqrt(ss / K + eps))
    offs_n = t * BLOCK_N + gl.arange(0, BLOCK_N, out.type.layout)
    n_ok = offs_n < n_out
    if HAS_RES:
        out += gl.load(res_ptr + offs_n, mask=n_ok, other=0.0).to(gl.float32)
    gl.store(o_ptr + offs_n, out.to(o_ptr.dtype.element_ty), mask=n_ok)


@gluon.jit
def _fetch_rows(desc, row0, w_smem, bars, BLOCK_N: gl.constexpr, CB: gl.constexpr,
                NBOX: gl.constexpr):
    """TMA loads of rows ``row0 .. row0 + BLOCK_N`` of one weight (viewed as ``[rows, K /
    256, 256]``), ``CB`` chunks of 256 inputs per box; box ``b`` lands in ``w_smem[b]`` and
    signals ``bars[b]`` (rows past the weight's end land as zeros)."""
    for b in gl.static_range(NBOX):
        bar = bars.index(b)
        mbarrier.expect(bar, BLOCK_N * CB * BOX * 2)
        tma.async_copy_global_to_shared(desc, [row0, b * CB, 0], bar, w_smem.index(b))


@gluon.jit
def _resident_kernel(
    x_ptr, g_ptr, res_ptr, d1, d2, d3, o1_ptr, o2_ptr, o3_ptr,
    K, N1, N2, N3, T1, T2, eps, in_scale,
    NUM_W: gl.constexpr, HAS_NORM: gl.constexpr, HAS_RES: gl.constexpr,
    BLOCK_N: gl.constexpr, CB: gl.constexpr, NBOX: gl.constexpr, X_ROWS: gl.constexpr,
    PDL: gl.constexpr, trace_ptr=None, DIAG: gl.constexpr = 0, EARLY_TRIGGER: gl.constexpr = 1,
    nx1=None, nx2=None, nx3=None, NX_ROWS=0, NX_PARTS=1, NX_UNITS=0, NX_WIDTH=0,
    NUM_NX: gl.constexpr = 0,
):
    """Program ``p`` computes outputs ``t * BLOCK_N ..`` of the weight its tile ``p`` belongs
    to (tiles of weight 1, then 2, then 3); see the module docstring. Tensors are 3-D
    ``[rows, chunk, 256]`` with one chunk at a time in registers."""
    _mark(trace_ptr, 0)
    dtype: gl.constexpr = d1.dtype
    layout: gl.constexpr = gl.BlockedLayout([1, 1, 8], [1, 1, 32], [gl.num_warps(), 1, 1],
                                            [2, 1, 0])
    w_smem = gl.allocate_shared_memory(dtype, [NBOX, BLOCK_N, CB, BOX], d1.layout)
    x_smem = gl.allocate_shared_memory(gl.float32, [X_ROWS, 1, BOX],
                                       gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]))
    bars = gl.allocate_shared_memory(gl.int64, [NBOX, 1], mbarrier.MBarrierLayout())
    for b in gl.static_range(NBOX):
        mbarrier.init(bars.index(b), count=1)
    fence_async_shared()

    # the weights, which no kernel of the step writes: every box in flight before the wait
    pid = gl.program_id(0)
    wi, t, n_out, o_ptr = _program_tile(pid, T1, T2, N1, N2, N3, o1_ptr, o2_ptr, o3_ptr, NUM_W)
    if wi == 0:
        _fetch_rows(d1, t * BLOCK_N, w_smem, bars, BLOCK_N, CB, NBOX)
    elif wi == 1:
        _fetch_rows(d2, t * BLOCK_N, w_smem, bars, BLOCK_N, CB, NBOX)
    else:
        _fetch_rows(d3, t * BLOCK_N, w_smem, bars, BLOCK_N, CB, NBOX)

    # x as one flat vector (past K masked): each thread's loads all in flight at once, its
    # squares summed in registers before any shuffle (as rows of 256, the compiled code issued
    # one row's load after the previous row's reduction)
    kx = gl.arange(0, X_ROWS * BOX, gl.BlockedLayout([8], [32], [gl.num_warps()], [0]))
    k_ok = kx < K
    if HAS_NORM:  # a weight too
        g = gl.load(g_ptr + kx, mask=k_ok, other=0.0).to(gl.float32)
    if DIAG == 3:  # diagnostic: every box waited for before the PDL wait, marked when landed
        for b in gl.static_range(NBOX):
            mbarrier.wait(bars.index(b), 0)
        _mark(trace_ptr, 2)
    _enter(PDL, EARLY_TRIGGER)
    _mark(trace_ptr, 1)
    if DIAG == 1:  # diagnostic: wait for every box first, mark, then read x
        for b in gl.static_range(NBOX):
            mbarrier.wait(bars.index(b), 0)
        _mark(trace_ptr, 2)
    x = gl.load(x_ptr + kx, mask=k_ok, other=0.0).to(dtype).to(gl.float32)
    ss = 0.0
    if HAS_NORM:
        ss = gl.sum(x * x, 0)
        x = x * g
    x_smem.reshape([X_ROWS * BOX]).store(x)
    gl.thread_barrier()
    if DIAG == 2:  # diagnostic: x read, normed and staged
        _mark(trace_ptr, 2)

    acc = gl.zeros([BLOCK_N, 1, BOX], gl.float32, layout)
    for b in gl.static_range(NBOX):
        mbarrier.wait(bars.index(b), 0)
        box = w_smem.index(b)
        for j in gl.static_range(CB):
            w = box.slice(j, 1, dim=1).load(layout).to(gl.float32)
            acc += w * x_smem.slice(b * CB + j, 1).load(layout)  # the same inputs every row
    if NUM_NX > 0:  # every box has landed: this launch's DRAM traffic is done
        _prefetch_next(pid, nx1, nx2, nx3, NX_ROWS, NX_PARTS, NX_UNITS, NX_WIDTH, NUM_NX)
    out = gl.sum(gl.sum(acc, 2), 1)
    if DIAG == 0:
        _mark(trace_ptr, 2)
    _store_outputs(out, ss, K, eps, in_scale, res_ptr, o_ptr, t, n_out, BLOCK_N, HAS_NORM,
                   HAS_RES)
    for b in gl.static_range(NBOX):
        mbarrier.invalidate(bars.index(b))
    _mark(trace_ptr, 3)


def box_chunks(chunks: int, cap: int | None = None) -> int:
    """Chunks of 256 inputs per TMA box: the largest power of two dividing ``chunks`` (box
    dimensions are powers of two), at most ``cap`` (default :data:`MAX_BOX_CHUNKS`)."""
    cb = 1
    while chunks % (2 * cb) == 0 and 2 * cb <= (cap or MAX_BOX_CHUNKS):
        cb *= 2
    return cb


def x_rows(chunks: int) -> int:
    """Rows of 256 inputs the kernel holds ``x`` in (a power of two, at least one per
    warp)."""
    return max(NUM_WARPS, triton.next_power_of_2(chunks))


def block_bytes(K: int, block_n: int, products: str = "fma") -> int:
    """Shared memory of one program: its weight rows, the staged input (``x * g`` in fp32;
    for ``"mma"`` its bf16 parts) and the barriers, plus :data:`CTA_RESERVE`."""
    chunks = K // BOX_K
    if products == "mma":
        from mlra.kernels.gluon_skinny_mma import x_bytes

        return K * block_n * 2 + x_bytes(K, block_n) + 4 * 8 + CTA_RESERVE
    return chunks * block_n * BOX_K * 2 + x_rows(chunks) * BOX_K * 4 + chunks * 8 + CTA_RESERVE


def resident_plan(K: int, ns: Sequence[int], sms: int, smem_per_sm: int,
                  block_n: int | None = None, products: str = "fma") -> int | None:
    """Rows per program for weights of ``ns`` rows over ``K`` inputs (bf16) such that every
    program is resident at once (``sms`` multiprocessors of ``smem_per_sm`` bytes); None when
    no choice fits or ``K`` is not a multiple of 256 up to 8192. ``block_n`` fixes it
    (still None if it does not fit). Otherwise the largest that still gives every
    multiprocessor a program, else the one with most programs."""
    if K % BOX_K or not 1 <= K // BOX_K <= MAX_CHUNKS:
        return None
    fitting = []
    for bn in ([block_n] if block_n else BLOCK_NS):
        if products == "mma":
            from mlra.kernels.gluon_skinny_mma import chunk_groups

            if chunk_groups(K, bn) is None:
                continue
        tiles = sum(triton.cdiv(n, bn) for n in ns)
        per_sm = smem_per_sm // block_bytes(K, bn, products)
        if per_sm >= 1 and tiles <= sms * per_sm:
            fitting.append((bn, tiles))
    if not fitting:
        return None
    filling = [bn for bn, tiles in fitting if tiles >= sms]
    return max(filling) if filling else min(bn for bn, _ in fitting)


def _call_plan(x: torch.Tensor, weights: Sequence[torch.Tensor], swiglu: bool,
               config: ResidentConfig) -> int | None:
    """Rows per program for this call (:func:`resident_plan`), None where the kernel does not
    take it (see :func:`resident_supports`)."""
    if swiglu or not 1 <= len(weights) <= 3 or not x.is_cuda:
        return None
    if torch.cuda.get_device_capability(x.device)[0] != 9:
        return None
    K = x.shape[-1]
    if x.numel() != K or x.dtype not in (torch.bfloat16, torch.float32):
        return None
    if not all(w.dtype == torch.bfloat16 and w.dim() == 2 and w.shape[1] == K
               and w.stride(1) == 1 and w.stride(0) == K and w.data_ptr() % 16 == 0
               for w in weights):
        return None
    cap = DEFAULT_MAX_MB if config.max_mb is None else config.max_mb
    if cap > 0 and sum(w.numel() for w in weights) * 2 > cap * 1e6:
        return None
    smem = sm_limits(x.device.index if x.device.index is not None else 0)[2]
    return resident_plan(K, [w.shape[0] for w in weights], device_sms(x), smem, config.block_n,
                         config.products or "fma")


def _config(config: ResidentConfig | None) -> ResidentConfig:
    return config or config_from_env(CONFIG_ENV, ResidentConfig) or ResidentConfig()


def resident_supports(x: torch.Tensor, weights: Sequence[torch.Tensor], swiglu: bool = False,
                      config: ResidentConfig | None = None) -> bool:
    """Calls the kernel takes: a Hopper GPU, one row of ``x`` (bf16 or fp32), one to three
    bf16 weights with contiguous 16-byte aligned rows over ``K`` inputs, a multiple of 256 up
    to 8192, no SwiGLU, within the size cap, and a :func:`resident_plan`."""
    return _call_plan(x, weights, swiglu, _config(config)) is not None


def skinny_linear_resident(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    in_scale: float = 1.0,
    residual: torch.Tensor | None = None,
    config: ResidentConfig | None = None,
    next_reads: NextReads | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gluon implementation of :func:`mlra.kernels.reference.skinny_linear_ref` for one row
    (no SwiGLU) on Hopper, for shapes :func:`resident_supports` takes; ``config`` overrides
    the rows per program (benchmarks, tuning); ``next_reads`` is fetched into L2 once the
    weights have landed (a hint)."""
    out = _planned_launch(x, weights, norm_weight, eps, in_scale, residual, _config(config),
                          next_reads)
    if out is None:
        raise ValueError("skinny_linear_resident: a call outside resident_supports")
    return out


def dispatch_resident(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    in_scale: float = 1.0,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    next_reads: NextReads | None = None,
) -> tuple[torch.Tensor, ...] | None:
    """What :func:`mlra.kernels.skinny_linear` runs here: the outputs where :data:`ENV` is
    not ``0`` and the kernel takes the call (:func:`resident_supports`, planned once), else
    None (the call stays with the Triton kernel)."""
    if swiglu or not env_switch(ENV):
        return None
    return _planned_launch(x, weights, norm_weight, eps, in_scale, residual, _config(None),
                           next_reads)


def _planned_launch(x: torch.Tensor, weights: Sequence[torch.Tensor],
                    norm_weight: torch.Tensor | None, eps: float, in_scale: float,
                    residual: torch.Tensor | None, config: ResidentConfig,
                    next_reads: NextReads | None = None) -> tuple[torch.Tensor, ...] | None:
    """The kernel's launch for a call :func:`_call_plan` takes; None for one it does not."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if residual is not None and len(weights) != 1:
        raise ValueError("a residual is added to a single output")
    bn = _call_plan(x, weights, False, config)
    if bn is None:
        return None
    K = x.shape[-1]
    ns = [w.shape[0] for w in weights]
    chunks = K // BOX_K
    if config.products == "mma":
        from mlra.kernels import gluon_skinny_mma as mma

        kernel, descs = mma._resident_mma_kernel, [mma.descriptor(w, bn) for w in weights]
        consts = mma.launch_consts(K, bn)
    else:
        cb = box_chunks(chunks, config.box_chunks)
        layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=3)
        kernel = _resident_kernel
        descs = [TensorDescriptor(w, [w.shape[0], chunks, BOX_K], [K, BOX_K, 1],
                                  [bn, cb, BOX_K], layout) for w in weights]
        consts = dict(BLOCK_N=bn, CB=cb, NBOX=chunks // cb, X_ROWS=x_rows(chunks),
                      DIAG=env_choice(DIAG_ENV, DIAG_MARKS), num_warps=NUM_WARPS)
    outs = [torch.empty(*x.shape[:-1], n, dtype=torch.bfloat16, device=x.device) for n in ns]
    tiles = [triton.cdiv(n, bn) for n in ns]
    pad = 3 - len(weights)
    x1 = x.reshape(K)
    res = residual.reshape(-1) if residual is not None else x1
    pdl = pdl_mode(x) > 0
    kernel[(sum(tiles),)](
        x1, norm_weight if norm_weight is not None else x1, res,
        *descs, *[descs[0]] * pad, *outs, *[outs[0]] * pad,
        K, *ns, *[0] * pad, *(tiles + [0, 0])[:2], float(eps), float(in_scale),
        NUM_W=len(weights), HAS_NORM=norm_weight is not None, HAS_RES=residual is not None,
        PDL=int(pdl), trace_ptr=trace_slot("skinny", (sum(tiles),), x),
        EARLY_TRIGGER=TRIGGERS[config.trigger or "entry"], **consts,
        **_next_args(next_reads), **({"launch_pdl": True} if pdl else {}),
    )
    return tuple(outs)


def _next_args(next_reads: NextReads | None) -> dict:
    """The kernel's arguments for ``next_reads`` (none: nothing fetched)."""
    if next_reads is None:
        return {}
    mats = list(next_reads.mats)
    return dict(nx1=mats[0], nx2=mats[min(1, len(mats) - 1)], nx3=mats[-1],
                NX_ROWS=next_reads.range_rows, NX_PARTS=next_reads.parts, NX_UNITS=next_reads.units,
                NX_WIDTH=next_reads.width, NUM_NX=len(mats))


def compile_for_sm90(K: int, num_w: int, block_n: int, norm: bool = True,
                     residual: bool = False, pdl: bool = True, trace: bool = False,
                     box: int | None = None, early_trigger: bool = True, next_mats: int = 0,
                     products: str = "fma"):
    """The kernel compiled for sm_90 without a GPU (Triton's bundled ptxas), for tests and
    resource reports (``early_trigger``: :attr:`ResidentConfig.trigger` ``"entry"``;
    ``next_mats``: the matrices of a :class:`NextReads` hint, 0 for none)."""
    from mlra.kernels.aot import compile_gluon_sm90

    chunks = K // BOX_K
    if products == "mma":
        from mlra.kernels import gluon_skinny_mma as mma

        kernel, consts = mma._resident_mma_kernel, mma.launch_consts(K, block_n)
        num_warps = consts.pop("num_warps")
        rows = mma.segments(block_n) * block_n
        desc = f"tensordesc<bf16[{rows}, {mma.CHUNK}],{mma.weight_layout()!r}>"
    else:
        cb = box_chunks(chunks, box)
        layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=3)
        desc = f"tensordesc<bf16[{block_n}, {cb}, {BOX_K}],{layout!r}>"
        kernel, num_warps = _resident_kernel, NUM_WARPS
        consts = {"BLOCK_N": block_n, "CB": cb, "NBOX": chunks // cb, "X_ROWS": x_rows(chunks),
                  "DIAG": 0}
    types = {"x_ptr": "*bf16", "g_ptr": "*bf16", "res_ptr": "*bf16", "d1": desc, "d2": desc,
             "d3": desc, "o1_ptr": "*bf16", "o2_ptr": "*bf16", "o3_ptr": "*bf16",
             "eps": "fp32", "in_scale": "fp32"}
    consts.update({"NUM_W": num_w, "HAS_NORM": norm, "HAS_RES": residual, "PDL": int(pdl),
                   "EARLY_TRIGGER": int(early_trigger), "NUM_NX": next_mats})
    if next_mats:
        types.update(nx1="*bf16", nx2="*bf16", nx3="*bf16")
    else:
        consts.update(nx1=None, nx2=None, nx3=None)
    if trace:
        types["trace_ptr"] = "*i64"
    else:
        consts["trace_ptr"] = None
    aligned = ["x_ptr", "g_ptr", "res_ptr", "o1_ptr", "o2_ptr", "o3_ptr", "K"]  # as at run time
    return compile_gluon_sm90(kernel, types, consts, aligned, num_warps=num_warps)
