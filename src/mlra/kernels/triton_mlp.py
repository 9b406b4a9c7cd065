"""The whole SwiGLU MLP of one decode token in one launch: ``x + W_down (silu(W_gate n(x)) *
(W_up n(x)))`` with ``n`` the RMSNorm, for batch 1, where the time is the bytes of the three
weights.

Two launches (gate/up, then down) each pay a ramp and a drain, and the down projection's rows
(``K = hidden``) split badly over the multiprocessors. Here every program owns a contiguous
range of hidden units and streams, for each of them, its gate row, its up row and its down
column -- the down weight held column-major (``w_down.t()`` contiguous, see
:func:`column_major`), so the column is one contiguous run like the two rows. All three
matrices are read by one balanced stream per multiprocessor. A program's partial output
(``d_model`` floats) goes to a workspace; after a grid barrier (one program per
multiprocessor, all resident) each program sums a slice of the columns over the partials in a
fixed order, adds the residual and stores. The result is deterministic.

Under the Triton interpreter (programs run one after another, a barrier would never open)
the partials and the sum run as two launches of the same kernel.

The barrier needs every program of the grid resident at once, so the grid is launched
cooperatively: the driver starts it only when all of its programs fit, also beside other
kernels (two decode loops on two streams of one GPU). That costs nothing measurable against a
plain launch (H200, in a CUDA graph with PDL: ``results/h200/gluon/call1``). The barrier is one
int64 count per stream and grid size (:func:`barrier_counter`) that only grows: each program
adds one (releasing its partial) and knows from its own ticket the count at which its launch
is complete, polls with relaxed loads, then takes one acquire fence; nothing resets it, so no
program pays a second atomic round before it leaves.
``MlpConfig(cooperative=False)`` launches plainly (then only one such launch at a time per GPU
is safe); ``MLRA_MLP_KERNEL=0`` keeps the two launches without a barrier.

The programs' main loops end over a spread of microseconds that changes from replay to
replay (H200: ``benchmarks/e2e_decode/results/h200/mlp_fixed``). ``MlpConfig(tail_steps=...)``
(off by default) hands part of the units out at run time without giving up the fixed order
of the sums: each program takes a rank (one atomic, a few loop steps before the end of its
own range) and the earliest ranks stream a few more loop steps of the units left over, each
rank's share into a workspace row of its own (:func:`tail_plan`).

Import only after checking :func:`mlra.kernels.triton_available`.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from mlra.kernels import column_major
from mlra.kernels._triton_common import (
    HOPPER_SM_LIMITS,
    INTERPRET,
    block_shared_memory,
    config_from_env,
    device_sms,
    env_choice,
    launch_options,
    next_pow2,
    pdl_launch_next,
    pdl_mode,
    pdl_wait,
    prefetch_l2,
    prefetch_units,
    sm_limits,
    stream_counters,
    trace_mark,
)
from mlra.kernels.hints import NextReads
from mlra.kernels.kernel_trace import trace_slot

#: elements of one weight tile (block of hidden units x padded model width) per loop step
TILE_ELEMENTS = 8192
#: pipeline depth of the weight tiles where shared memory allows (H200, MLRA-4's MLP: 2 x 4096
#: tiles, 4 stages, 4 warps, one program per multiprocessor: 47.9 us for 182 MB, 89% of copy
#: bandwidth, against 50.7 us for the two launches it replaces; results/h200/mlp/call2)
DEFAULT_STAGES = 4


@dataclasses.dataclass(frozen=True)
class MlpConfig:
    """Launch parameters (``None``: the defaults of :func:`swiglu_mlp_triton`)."""

    block_h: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    #: programs per multiprocessor (default 1); the one-launch form takes at most what the
    #: compiled kernel keeps resident at once (:func:`resident_per_sm`), or the barrier
    #: would wait for programs that cannot start
    per_sm: int | None = None
    #: False: partials and the column sums as two launches (no grid barrier)
    one_launch: bool | None = None
    #: loop steps (of ``block_h`` hidden units) left in a program's main loop when it lets
    #: the next launch start (PDL); default 0: once its main loop is done. Earlier lets the
    #: next launch's weight loads use the bandwidth of programs that finish first.
    next_left: int | None = None
    #: the run-time tail (default 0: off): at most this many loop steps of hidden units each
    #: program may take on after its own range, by the order in which the programs neared the
    #: end of their main loops (:func:`tail_plan`); evens out loop ends that vary from replay
    #: to replay, the sums staying in a fixed order
    tail_steps: int | None = None
    #: programs per rank group of the tail (default ``programs // (tail_steps + 1)``): the
    #: first group to near its end takes ``tail_steps`` more steps, the next one fewer, ...
    tail_group: int | None = None
    #: launch the one-launch form as a cooperative grid (default True: the driver guarantees
    #: that all programs are resident at once, also beside other launches; False: a plain
    #: launch, safe only with one such launch at a time per GPU)
    cooperative: bool | None = None


@triton.jit
def _arrive(cnt_ptr, n_programs):
    """Count this program in at ``cnt_ptr`` (an int64 that only launches of ``n_programs``
    programs count at, each adding ``n_programs``: it never needs resetting) with its global
    writes before it released; returns the count at which every program of this launch is
    in."""
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
    return (ticket // n_programs + 1) * n_programs


@triton.jit
def _load_relaxed(ptr):
    """The int64 at ``ptr`` (a relaxed load at GPU scope: read at L2, no L1 invalidation)."""
    return tl.inline_asm_elementwise("ld.relaxed.gpu.global.b64 $0, [$1];", "=l,l", [ptr],
                                     dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _wait_for(cnt_ptr, target):
    """Wait until the count at ``cnt_ptr`` reaches ``target``, then an acquire fence: the
    writes the counted programs released are visible after it. (Polling with acquire loads
    instead, each invalidating L1, made MLRA-4's step 1.2% slower on the H200:
    ``benchmarks/e2e_decode/results/h200/mlp_fixed``, calls 3-4.)"""
    seen = _load_relaxed(cnt_ptr)
    while seen < target:
        seen = _load_relaxed(cnt_ptr)
    tl.inline_asm_elementwise("fence.acq_rel.gpu; // $0 $1", "=r,l", [cnt_ptr], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _launch_next_if(cond):
    """``griddepcontrol.launch_dependents`` where ``cond`` (an int32) is not 0: a predicated
    instruction, no branch, so a pipelined loop stays one loop."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $1, 0; @p griddepcontrol.launch_dependents; } // $0",
        "=r,r", [cond], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _residual_slice(res_ptr, slot, D, COLS: tl.constexpr, HAS_RES: tl.constexpr):
    """Columns ``[slot * COLS, (slot + 1) * COLS)`` of the residual (fp32; zeros without
    one)."""
    offs_c = slot * COLS + tl.arange(0, COLS)
    if HAS_RES:
        return tl.load(res_ptr + offs_c, mask=offs_c < D, other=0.0).to(tl.float32)
    return tl.zeros([COLS], dtype=tl.float32)


@triton.jit
def _column_sums(ws_ptr, res, out_ptr, slot, D, n_parts, COLS: tl.constexpr,
                 P_PAD: tl.constexpr):
    """Columns ``[slot * COLS, (slot + 1) * COLS)`` of the output: ``res`` (that slice of the
    residual, fp32) plus the partials added in program order (rows in blocks of at most 8192
    values)."""
    ROWS: tl.constexpr = min(P_PAD, max(1, 8192 // COLS))
    offs_c = slot * COLS + tl.arange(0, COLS)
    mask_c = offs_c < D
    out = tl.zeros([COLS], dtype=tl.float32)
    for r in tl.static_range(0, P_PAD, ROWS):
        offs_p = r + tl.arange(0, ROWS)
        part = tl.load(ws_ptr + offs_p[:, None] * D + offs_c[None, :],
                       mask=(offs_p < n_parts)[:, None] & mask_c[None, :], other=0.0,
                       cache_modifier=".cg")
        out += tl.sum(part, axis=0)
    out += res
    tl.store(out_ptr + offs_c, out.to(out_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _units(y, xn, wg_ptr, wu_ptr, wd_ptr, h0, h_hi, s_g, s_u, s_d, offs_d, mask_d,
           BLOCK_H: tl.constexpr):
    """``y`` plus hidden units ``h0 .. h0 + BLOCK_H`` (below ``h_hi``): their gate and up rows
    against ``xn``, the activation, times their down columns."""
    offs_h = h0 + tl.arange(0, BLOCK_H)
    mask = (offs_h < h_hi)[:, None] & mask_d[None, :]
    wg = tl.load(wg_ptr + offs_h[:, None] * s_g + offs_d[None, :], mask=mask, other=0.0)
    wu = tl.load(wu_ptr + offs_h[:, None] * s_u + offs_d[None, :], mask=mask, other=0.0)
    wd = tl.load(wd_ptr + offs_h[:, None] * s_d + offs_d[None, :], mask=mask, other=0.0)
    gate = tl.sum(wg.to(tl.float32) * xn[None, :], axis=1)
    up = tl.sum(wu.to(tl.float32) * xn[None, :], axis=1)
    # the activation rounded to the weights' dtype, as the module path stores it
    act = (gate / (1.0 + tl.exp(-gate)) * up).to(wd.dtype).to(tl.float32)
    return y + tl.sum(act[:, None] * wd.to(tl.float32), axis=0)


@triton.jit
def _prefetch_units(wg_ptr, wu_ptr, wd_ptr, h0, h_end, s_g, s_u, s_d, D,
                    D_PAD: tl.constexpr, LINE: tl.constexpr, MAX_UNITS: tl.constexpr,
                    PDL: tl.constexpr):
    """Hidden units ``h0 .. min(h_end, h0 + MAX_UNITS)`` of the three weights into L2, a
    prefetch per ``LINE`` elements (only in PDL mode 2: :func:`prefetch_l2`)."""
    offs_l = tl.arange(0, D_PAD // LINE) * LINE
    rows = h0 + tl.arange(0, MAX_UNITS)
    ok = (rows < h_end)[:, None] & (offs_l < D)[None, :]
    prefetch_l2(tl.where(ok, wg_ptr + rows[:, None] * s_g + offs_l[None, :], wg_ptr), PDL)
    prefetch_l2(tl.where(ok, wu_ptr + rows[:, None] * s_u + offs_l[None, :], wu_ptr), PDL)
    prefetch_l2(tl.where(ok, wd_ptr + rows[:, None] * s_d + offs_l[None, :], wd_ptr), PDL)


@triton.jit
def _tail_share(rank, tail_e, tail_g):
    """``(steps, first)``: the run-time tail's loop steps for the program that neared its end
    ``rank``-th, and where they start among the tail's steps (:func:`tail_plan`)."""
    q = rank // tail_g
    steps = tl.maximum(tail_e - q, 0)
    full = tl.minimum(q, tail_e)
    first = tail_g * (full * tail_e - full * (full - 1) // 2) + (rank % tail_g) * steps
    return steps, first


@triton.jit(do_not_specialize=["D", "H", "n_parts", "h_static", "tail_e", "tail_g", "n_rows"])
def _mlp_kernel(
    x_ptr, g_ptr, res_ptr, wg_ptr, wu_ptr, wd_ptr, out_ptr, ws_ptr, cnt_ptr,
    D, H, n_parts, s_g, s_u, s_d, eps,
    D_PAD: tl.constexpr, BLOCK_H: tl.constexpr, COLS: tl.constexpr, P_PAD: tl.constexpr,
    PHASE: tl.constexpr, HAS_RES: tl.constexpr, NUM_STAGES: tl.constexpr,
    ALIGNED: tl.constexpr = False, PDL: tl.constexpr = 0, PF_ROWS: tl.constexpr = 0,
    LINE: tl.constexpr = 64, DIAG: tl.constexpr = 0, trace_ptr=None,
    NEXT_LEFT: tl.constexpr = 0, rank_ptr=None, h_static=0, tail_e=0, tail_g=1, n_rows=0,
    TAIL: tl.constexpr = 0, TAIL_LEFT: tl.constexpr = 2, TAIL_PF: tl.constexpr = 4,
):
    """PHASE 0: partials, grid barrier, column sums (one launch, all programs resident;
    ``cnt_ptr`` an int64 kept for launches of ``n_parts`` programs); 1: partials only; 2:
    column sums only (programs = column slices). ``DIAG`` 1 (trace diagnostic): mark 1 when
    the program has counted in at the barrier, mark 3 when it may read the partials (instead
    of after the PDL wait and on exit). ``TAIL`` 1: program ``p`` streams units ``p *
    h_static // n_parts ..`` and, ``TAIL_LEFT`` steps before its end, takes a rank from the
    int64 at ``rank_ptr`` (which every launch advances by ``n_parts``) and (PDL mode 2)
    prefetches the first ``TAIL_PF`` units of its tail into L2; ranks with tail steps
    (:func:`_tail_share`) stream those of units ``h_static .. H`` into workspace row
    ``n_parts + rank``; the sums add ``n_rows`` rows."""
    trace_mark(trace_ptr, 0)
    pid = tl.program_id(0)
    if ALIGNED:  # D a multiple of 8, in a form the alignment analysis sees: 16-byte loads
        D = (D // 8) * 8
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    if not TAIL:
        h_static = H
        n_rows = n_parts
    if PHASE != 2:
        h_lo = pid * h_static // n_parts
        h_hi = (pid + 1) * h_static // n_parts
        if PF_ROWS > 0:  # the first rows of this program's three weights, before the wait
            _prefetch_units(wg_ptr, wu_ptr, wd_ptr, h_lo, h_hi, s_g, s_u, s_d, D, D_PAD, LINE,
                            PF_ROWS, PDL)
        pdl_wait(PDL)
        if DIAG == 0:
            trace_mark(trace_ptr, 1)
        x = tl.load(x_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
        xn = x * rstd * tl.load(g_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y = tl.zeros([D_PAD], dtype=tl.float32)
        rank = pid * 0
        # the step at which this program takes its rank (each takes exactly one)
        claim_h = h_lo + tl.maximum(tl.cdiv(h_hi - h_lo, BLOCK_H) - 1 - TAIL_LEFT, 0) * BLOCK_H
        for h0 in tl.range(h_lo, h_hi, BLOCK_H, num_stages=NUM_STAGES):
            y = _units(y, xn, wg_ptr, wu_ptr, wd_ptr, h0, h_hi, s_g, s_u, s_d, offs_d, mask_d,
                       BLOCK_H)
            if NEXT_LEFT > 0 and PDL > 0:  # the next launch may start this many steps early
                _launch_next_if((h0 >= h_hi - NEXT_LEFT * BLOCK_H).to(tl.int32))
            if TAIL:
                if h0 == claim_h:  # take a rank; its first tail rows into L2
                    rank = (tl.atomic_add(rank_ptr, 1, sem="relaxed") % n_parts).to(tl.int32)
                    steps, first = _tail_share(rank, tail_e, tail_g)
                    t_lo = h_static + first * BLOCK_H
                    _prefetch_units(wg_ptr, wu_ptr, wd_ptr, t_lo, t_lo + steps * BLOCK_H, s_g,
                                    s_u, s_d, D, D_PAD, LINE, TAIL_PF, PDL)
        pdl_launch_next(PDL)
        trace_mark(trace_ptr, 2)
        tl.store(ws_ptr + pid * D + offs_d, y, mask=mask_d)
        if TAIL:  # the tail steps of this program's rank, into that rank's own row
            steps, first = _tail_share(rank, tail_e, tail_g)
            if steps > 0:
                t_lo = h_static + first * BLOCK_H
                t_hi = tl.minimum(t_lo + steps * BLOCK_H, H)
                y = tl.zeros([D_PAD], dtype=tl.float32)
                for t0 in tl.range(t_lo, t_hi, BLOCK_H, num_stages=NUM_STAGES):
                    y = _units(y, xn, wg_ptr, wu_ptr, wd_ptr, t0, t_hi, s_g, s_u, s_d, offs_d,
                               mask_d, BLOCK_H)
                tl.store(ws_ptr + (n_parts + rank) * D + offs_d, y, mask=mask_d)
    if PHASE == 0:  # every partial written and visible
        res = _residual_slice(res_ptr, pid, D, COLS, HAS_RES)  # in flight during the barrier
        target = _arrive(cnt_ptr, n_parts)
        if DIAG == 1:
            trace_mark(trace_ptr, 1)
        _wait_for(cnt_ptr, target)
        if DIAG == 1:
            trace_mark(trace_ptr, 3)
        if pid * COLS < D:
            _column_sums(ws_ptr, res, out_ptr, pid, D, n_rows, COLS, P_PAD)
    if PHASE == 2:
        pdl_wait(PDL)
        trace_mark(trace_ptr, 1)
        trace_mark(trace_ptr, 2)
        if pid * COLS < D:
            _column_sums(ws_ptr, _residual_slice(res_ptr, pid, D, COLS, HAS_RES), out_ptr, pid,
                         D, n_rows, COLS, P_PAD)
    if DIAG == 0:
        trace_mark(trace_ptr, 3)


DIAG_ENV = "MLRA_MLP_DIAG"
"""Trace diagnostic of the one-launch form: ``barrier`` marks when each program has counted
in (mark 1) and when it may read the partials (mark 3), for ``trace_step.py``."""
DIAG_MARKS = {"": 0, "barrier": 1}


CONFIG_ENV = "MLRA_MLP_CONFIG"
"""Environment variable with launch parameters as JSON (fields of :class:`MlpConfig`), for
tuning runs."""


def _env_config() -> MlpConfig:
    return config_from_env(CONFIG_ENV, MlpConfig) or MlpConfig()


def resident_per_sm(n_regs: int, shared: int, num_warps: int,
                    limits: tuple[int, int, int] = HOPPER_SM_LIMITS) -> int:
    """Programs of a kernel (``n_regs`` registers per thread, ``shared`` bytes of shared
    memory, ``num_warps`` warps) one multiprocessor holds at once, by its ``limits`` (threads,
    registers, shared memory; Hopper's by default): registers are allocated per warp in
    units of 256, each program's shared memory plus 1 KB reserved."""
    threads, regs, smem = limits
    by_threads = threads // (32 * num_warps)
    by_regs = regs // (-(-n_regs * 32 // 256) * 256 * num_warps) if n_regs else by_threads
    by_smem = smem // (shared + 1024)
    return max(0, min(by_threads, by_regs, by_smem, 32))


def barrier_counter(device: torch.device, programs: int) -> torch.Tensor:
    """The one-launch form's barrier count (one int64) for grids of ``programs`` on the
    current stream of ``device``: every launch adds ``programs``, so a launch's programs know
    from their own ticket when all of them are in, and the count is never reset."""
    return stream_counters(device, f"mlp_barrier_{programs}", 2).view(torch.int64)


def rank_counter(device: torch.device, programs: int) -> torch.Tensor:
    """The run-time tail's rank count (one int64) for grids of ``programs`` on the current
    stream of ``device``: each program of a launch takes one ticket, so a launch's tickets
    are ``programs`` consecutive numbers and their remainders a permutation of the ranks,
    whatever the count started at; never reset."""
    return stream_counters(device, f"mlp_rank_{programs}", 2).view(torch.int64)


def _launch_residency(kernel, args: tuple, kwargs: dict, grid: tuple,
                     device: torch.device) -> int | None:
    """Programs of ``kernel``, compiled (not launched) for these arguments, that one
    multiprocessor of ``device`` holds at once (:func:`resident_per_sm`): what a grid barrier
    needs to know before a launch. None where it cannot be told."""
    try:
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        compiled._init_handles()
        return resident_per_sm(compiled.n_regs, compiled.metadata.shared,
                               compiled.metadata.num_warps, sm_limits(device.index or 0))
    except Exception:
        return None


_PARTS: dict[tuple, int] = {}
LAST_LAUNCH: dict = {}
"""Programs, form (one launch or two), units per loop step and units streamed in fixed ranges
(the rest is the run-time tail) of the latest call (for benchmarks and tests)."""


def _one_launch_parts(args: tuple, key: tuple, want: int, sms: int, device: torch.device,
                      consts: dict) -> int:
    """Programs of a one-launch grid: ``want`` per multiprocessor, fewer where the compiled
    kernel does not fit that many at once (0: not even one; then two launches)."""
    if key in _PARTS:
        return _PARTS[key]
    per_sm = want
    while per_sm > 0:
        parts = per_sm * sms
        trial = {**consts, "COLS": next_pow2(triton.cdiv(args[9], parts)),
                 "P_PAD": next_pow2(parts)}
        fits = _launch_residency(_mlp_kernel, (*args[:11], parts, *args[12:]), trial,
                                (parts,), device)
        if fits is None:  # cannot tell: one per multiprocessor, the safe choice
            fits = 1
        if fits >= per_sm:
            break
        per_sm = min(per_sm - 1, fits)
    _PARTS[key] = per_sm * sms
    return _PARTS[key]


def default_block_h(d_pad: int) -> int:
    """Hidden units per loop step: tiles of about :data:`TILE_ELEMENTS` per weight."""
    return max(1, min(16, TILE_ELEMENTS // d_pad))


def default_stages(stage_bytes: int, shared: int) -> int:
    """Pipeline depth: :data:`DEFAULT_STAGES`, fewer where ``shared`` bytes of shared memory
    per block (less 8 KB for the rest) do not hold ``stages - 1`` buffers of ``stage_bytes``
    (1: tiles loaded straight into registers)."""
    return max(1, min(DEFAULT_STAGES, (shared - (8 << 10)) // max(1, stage_bytes) + 1))


def tail_plan(hidden: int, programs: int, block_h: int, steps: int,
              group: int | None = None) -> tuple[int, int, int]:
    """The run-time tail of :class:`MlpConfig` for ``hidden`` units over ``programs`` of
    ``block_h`` units per loop step: ``(static, steps, group)``. Programs stream ``static``
    units in fixed ranges; ranks (the order in which they near the end of that range) ``0 ..
    group - 1`` then take ``steps`` loop steps of the remaining units, the next ``group`` ranks
    one step fewer, and so on (``group * steps * (steps + 1) / 2`` steps in all). ``(hidden,
    0, 1)`` where ``steps`` is 0; a tail that leaves a program no unit of its own, or more
    ranks than programs, is refused."""
    if steps <= 0:
        return hidden, 0, 1
    group = programs // (steps + 1) if group is None else group
    if group < 1 or group * steps > programs:
        raise ValueError(f"tail_steps={steps} with tail_group={group} needs 1 <= group and "
                         f"group * steps <= {programs} (programs); choose fewer steps or a "
                         "smaller group")
    static = hidden - group * steps * (steps + 1) // 2 * block_h
    if static < programs:
        raise ValueError(f"tail_steps={steps} (group {group}) hands out "
                         f"{hidden - static} of {hidden} hidden units at run time, leaving "
                         f"fewer than one per program ({programs}); choose fewer steps")
    return static, steps, group


def one_launch_programs(x: torch.Tensor, w_gate: torch.Tensor,
                        config: MlpConfig | None = None) -> int:
    """Programs the one-launch form asks for, for ``x`` and hidden units ``w_gate.shape[0]``
    (program ``p`` streams units from ``p * H // programs``): ``per_sm`` (default one) per
    multiprocessor. (Where the compiled kernel keeps fewer resident the launch takes fewer;
    a hint built on this count is then off, never wrong.)"""
    cfg = _env_config() if config is None else config
    return min((cfg.per_sm or 1) * device_sms(x), w_gate.shape[0])


def _block_h(cfg: MlpConfig, d_model: int) -> int:
    """Hidden units per loop step for ``cfg`` and ``d_model``."""
    return cfg.block_h or default_block_h(next_pow2(d_model))


def first_reads(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                w_down: torch.Tensor, units: int, config: MlpConfig | None = None) -> NextReads:
    """What the one-launch form's programs read first, as a hint for the launch before it:
    the gate and up rows and down columns of the first ``units`` hidden units of each
    program's fixed range. The ranges split the units the programs stream in fixed ranges
    (program ``p`` from ``p * static // programs``): all of them, or with a run-time tail
    those :func:`tail_plan` leaves outside it."""
    cfg = _env_config() if config is None else config
    programs = one_launch_programs(x, w_gate, cfg)
    static, _, _ = tail_plan(w_gate.shape[0], programs, _block_h(cfg, x.shape[-1]),
                             cfg.tail_steps or 0, cfg.tail_group)
    return NextReads((w_gate, w_up, w_down.t()), programs, units, static)


def swiglu_mlp_triton(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    residual: torch.Tensor | None = None,
    config: MlpConfig | None = None,
) -> torch.Tensor:
    """Triton implementation of :func:`mlra.kernels.reference.swiglu_mlp_ref` for one row
    (``x [..., d_model]`` with one row in all); ``w_down`` column-major
    (:func:`column_major`). ``config`` overrides launch parameters (benchmarks, tests)."""
    D = x.shape[-1]
    H = w_gate.shape[0]
    if x.numel() != D:
        raise ValueError(f"swiglu_mlp_triton takes one row, got {x.numel() // D}")
    if not column_major(w_down):
        raise ValueError("w_down must be column-major (w_down.t() contiguous)")
    x2 = x.reshape(1, D).contiguous()
    cfg = _env_config() if config is None else config
    d_pad = next_pow2(D)
    block_h = _block_h(cfg, D)
    sms = device_sms(x)
    one_launch = (cfg.one_launch if cfg.one_launch is not None else True) and not INTERPRET
    per_sm = cfg.per_sm or 1
    ws_rows = one_launch_programs(x, w_gate, cfg)
    pdl = pdl_mode(x2)
    es = w_gate.element_size()
    res = residual.reshape(1, D) if residual is not None else x2
    out = torch.empty(1, D, dtype=w_down.dtype, device=x.device)
    common = dict(D_PAD=d_pad, BLOCK_H=block_h, HAS_RES=residual is not None,
                  NUM_STAGES=cfg.num_stages or default_stages(3 * block_h * d_pad * es,
                                                              block_shared_memory(x)),
                  ALIGNED=D % 8 == 0 and all(w.stride(0 if w is not w_down else 1) % 8 == 0
                                             for w in (w_gate, w_up, w_down)),
                  num_warps=cfg.num_warps or max(4, d_pad // 1024), **launch_options(pdl))
    # a row per program, and (run-time tail) one per rank with tail steps: fewer than the
    # programs (tail_plan)
    ws = torch.empty(2 * ws_rows if cfg.tail_steps else ws_rows, D, dtype=torch.float32,
                     device=x.device)
    args = [x2, norm_weight, res, w_gate, w_up, w_down, out, ws,
            barrier_counter(x.device, ws_rows),
            D, H, ws_rows, w_gate.stride(0), w_up.stride(0), w_down.stride(1), float(eps)]
    parts = ws_rows
    if one_launch:
        key = (x.device, D, H, block_h, common["NUM_STAGES"], common["num_warps"], per_sm,
               residual is not None, common["ALIGNED"], pdl, x2.dtype, w_gate.dtype,
               bool(cfg.tail_steps))
        tail = {"TAIL": 1, "rank_ptr": args[8]} if cfg.tail_steps else {}  # any int64 will do
        parts = min(H, _one_launch_parts(tuple(args), key, per_sm, sms, x.device,
                                         {**common, "PHASE": 0, "PDL": pdl, **tail}))
        one_launch = parts > 0
        parts = parts or ws_rows
        args[11] = parts
    h_static, tail_e, tail_g = tail_plan(H, parts, block_h, cfg.tail_steps or 0, cfg.tail_group)
    n_rows = parts + tail_e * tail_g
    if tail_e:  # every launch advances the ranks by `parts`
        common.update(TAIL=1, rank_ptr=rank_counter(x.device, parts), h_static=h_static,
                      tail_e=tail_e, tail_g=tail_g, n_rows=n_rows)
    pf = prefetch_units(triton.cdiv(h_static, parts), parts, 3 * D * es, sms, per_sm, 16) \
        if pdl > 1 else 0
    cols = next_pow2(triton.cdiv(D, parts))
    common.update(COLS=cols, P_PAD=next_pow2(n_rows), PDL=pdl, NEXT_LEFT=cfg.next_left or 0)
    LAST_LAUNCH.update(programs=parts, one_launch=one_launch, block_h=block_h,
                       static_units=h_static)
    if one_launch:
        coop = {"launch_cooperative_grid": True} if cfg.cooperative is not False else {}
        args[8] = barrier_counter(x.device, parts)  # its own per stream and grid size
        _mlp_kernel[(parts,)](*args, PHASE=0, PF_ROWS=pf, LINE=128 // es, **common, **coop,
                              DIAG=env_choice(DIAG_ENV, DIAG_MARKS),
                              trace_ptr=trace_slot("mlp", (parts,), x2))
    else:
        _mlp_kernel[(parts,)](*args, PHASE=1, PF_ROWS=pf, LINE=128 // es, **common,
                              trace_ptr=trace_slot("mlp_partials", (parts,), x2))
        _mlp_kernel[(triton.cdiv(D, cols),)](
            *args, PHASE=2, **common,
            trace_ptr=trace_slot("mlp_sums", (triton.cdiv(D, cols),), x2))
    return out.view(x.shape)
