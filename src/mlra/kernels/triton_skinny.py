"""Weight-streaming matrix products for small batches (decode steps): ``x @ W.T`` with up to
``M = 64`` rows of ``x``, where the time is the bytes of ``W``.

One kernel, :func:`_skinny_kernel`, covers the projections of a decode step:

- an optional RMSNorm of ``x`` folded into the product (``x * g`` streamed, the per-row
  ``1 / rms`` applied in the epilogue from sums of squares gathered by the same loads), times a
  scale;
- up to three weights reading the same input in one launch (e.g. the query and KV down
  projections, or the q/k/v projections), each with its own output;
- SwiGLU: gate and up tiles read side by side, ``silu(gate) * up`` in the epilogue;
- a residual added in the epilogue;
- split-K reduced in the kernel: every program of an output tile writes its fp32 partial, the
  last one to arrive (a counter per tile, reset by that program) sums them and runs the
  epilogue, so one launch produces the final output;
- programmatic dependent launch on Hopper (:func:`mlra.kernels._triton_common.pdl_mode`): a
  program prefetches the first lines of its weight slice into L2 and then waits for the
  previous kernel, whose output it reads, so the weight stream starts during that kernel's
  tail.

Import only after checking :func:`mlra.kernels.triton_available`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import (
    device_sms,
    launch_options,
    next_pow2,
    pdl_launch_next,
    pdl_mode,
    pdl_wait,
    prefetch_l2,
    prefetch_units,
    stream_counters,
    trace_mark,
)
from mlra.kernels.kernel_trace import trace_slot

MAX_ROWS = 64
MAX_WEIGHTS = 3


@dataclasses.dataclass(frozen=True)
class SkinnyConfig:
    """Launch parameters (``None``: chosen by :func:`default_skinny_config`)."""

    block_n: int | None = None
    block_k: int | None = None
    split_k: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    #: programs per multiprocessor the split-K heuristic aims for
    waves: float | None = None
    #: one row: keep per-lane partial sums over the K loop and reduce them once at the end
    #: (False: reduce every tile across lanes)
    lane_sums: bool | None = None
    #: under PDL let the next kernel launch right after this one's wait (its prefetch then
    #: overlaps this stream) instead of after the main loop
    early_next: bool | None = None


@triton.jit(do_not_specialize=["N1", "N2", "N3", "T1", "T2"])
def _skinny_kernel(
    x_ptr, g_ptr, res_ptr, ws_ptr, cnt_ptr,
    w1_ptr, w2_ptr, w3_ptr, o1_ptr, o2_ptr, o3_ptr,
    M, K, N1, N2, N3, T1, T2,
    stride_xm, stride_rm, sw1, sw2, sw3, so1, so2, so3,
    eps, in_scale,
    NUM_W: tl.constexpr, SWIGLU: tl.constexpr, HAS_NORM: tl.constexpr, HAS_RES: tl.constexpr,
    SPLIT_K: tl.constexpr, K_SPLIT: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ALIGNED: tl.constexpr,
    PDL: tl.constexpr = 0, PF_LINES: tl.constexpr = 0, LINE: tl.constexpr = 64,
    LANE_SUMS: tl.constexpr = True, EARLY_NEXT: tl.constexpr = False, trace_ptr=None,
):
    """One output tile (BLOCK_N outputs of one weight, all rows) over one K range. RMSNorm is
    folded: ``(x * rstd * g) @ W.T = rstd * ((x * g) @ W.T)``, the sum of squares accumulated
    from the same loads (per K range, summed with the partials under split-K)."""
    trace_mark(trace_ptr, 0)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_cols = tl.num_programs(0) * BLOCK_N  # workspace row width
    # which weight this output tile belongs to (tiles of weight 1, then 2, then 3)
    w_ptr, o_ptr, N, sw, so, t = w1_ptr, o1_ptr, N1, sw1, so1, pid_n
    if NUM_W >= 2:
        if pid_n >= T1:
            w_ptr, o_ptr, N, sw, so, t = w2_ptr, o2_ptr, N2, sw2, so2, pid_n - T1
    if NUM_W >= 3:
        if pid_n >= T1 + T2:
            w_ptr, o_ptr, N, sw, so, t = w3_ptr, o3_ptr, N3, sw3, so3, pid_n - T1 - T2

    if ALIGNED:  # rows start on 16-byte boundaries: vector loads (e.g. K = 9880)
        # K too: the K-range masks then hold for runs of 8 elements, so the tile loads stay
        # 16-byte vectors and the loop is pipelined (with K = 9880 it was not: no
        # asynchronous copies, each tile waited a full memory latency)
        # (// 8 * 8: a form the compiler's alignment analysis sees; tl.multiple_of on these
        # scalar arguments left the loop unpipelined)
        K = (K // 8) * 8
        sw = (sw // 8) * 8
        sw2 = (sw2 // 8) * 8
        stride_xm = (stride_xm // 8) * 8
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = t * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_kb = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    ss = tl.zeros([BLOCK_M], dtype=tl.float32)
    fma = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # one row: per-lane partial sums
    fma2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    if PF_LINES > 0:  # weights no kernel writes: their first lines into L2 before the wait
        pf_k = k_lo + tl.arange(0, PF_LINES) * LINE
        pf_ok = mask_n[:, None] & (pf_k < k_hi)[None, :]
        prefetch_l2(tl.where(pf_ok, w_ptr + offs_n[:, None] * sw + pf_k[None, :], w_ptr), PDL)
        if SWIGLU:
            prefetch_l2(tl.where(pf_ok, w2_ptr + offs_n[:, None] * sw2 + pf_k[None, :], w2_ptr),
                        PDL)
    pdl_wait(PDL)
    if EARLY_NEXT:
        pdl_launch_next(PDL)
    trace_mark(trace_ptr, 1)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
        kk = k0 + offs_kb
        mask_k = kk < k_hi
        xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        xv = xv.to(w1_ptr.dtype.element_ty)  # an fp32 input is rounded as the reference does
        w = tl.load(w_ptr + offs_n[:, None] * sw + kk[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if SWIGLU:
            w2 = tl.load(w2_ptr + offs_n[:, None] * sw2 + kk[None, :],
                         mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if HAS_NORM:
            xf = xv.to(tl.float32)
            ss += tl.sum(xf * xf, axis=1)
            xv = xf * tl.load(g_ptr + kk, mask=mask_k, other=0.0).to(tl.float32)[None, :]
        if BLOCK_M == 1:  # one row: a weight-streaming dot product per output
            xf = xv.to(tl.float32)
            if LANE_SUMS:  # elementwise FMAs, reduced over K once after the loop
                fma += w.to(tl.float32) * xf
                if SWIGLU:
                    fma2 += w2.to(tl.float32) * xf
            else:
                acc += tl.sum(w.to(tl.float32) * xf, axis=1)[None, :]
                if SWIGLU:
                    acc2 += tl.sum(w2.to(tl.float32) * xf, axis=1)[None, :]
        else:
            xb = xv.to(w1_ptr.dtype.element_ty)
            acc += tl.dot(xb, tl.trans(w))
            if SWIGLU:
                acc2 += tl.dot(xb, tl.trans(w2))
    if not EARLY_NEXT:
        pdl_launch_next(PDL)
    trace_mark(trace_ptr, 2)
    if BLOCK_M == 1 and LANE_SUMS:
        acc = tl.sum(fma, axis=1)[None, :]
        if SWIGLU:
            acc2 = tl.sum(fma2, axis=1)[None, :]

    if SPLIT_K > 1:
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        part = offs_m[:, None] * n_cols + cols[None, :]
        plane = BLOCK_M * n_cols
        ss_ptr = ws_ptr + (2 * SPLIT_K) * plane + pid_n * SPLIT_K * BLOCK_M
        tl.store(ws_ptr + pid_k * plane + part, acc)
        if SWIGLU:
            tl.store(ws_ptr + (SPLIT_K + pid_k) * plane + part, acc2)
        if HAS_NORM:
            tl.store(ss_ptr + pid_k * BLOCK_M + offs_m, ss)
        tl.debug_barrier()  # every thread's partial is written before the arrival is counted
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:  # the last program of this tile reduces and finishes
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            ss = tl.zeros([BLOCK_M], dtype=tl.float32)
            for s in range(SPLIT_K):
                acc += tl.load(ws_ptr + s * plane + part, cache_modifier=".cg")
                if SWIGLU:
                    acc2 += tl.load(ws_ptr + (SPLIT_K + s) * plane + part,
                                    cache_modifier=".cg")
                if HAS_NORM:
                    ss += tl.load(ss_ptr + s * BLOCK_M + offs_m, cache_modifier=".cg")
            _finish(acc, acc2, ss, K, eps, in_scale, res_ptr, stride_rm, o_ptr, so, offs_m,
                    offs_n, mask_m, mask_n, SWIGLU, HAS_NORM, HAS_RES)
            tl.store(cnt_ptr + pid_n, 0)  # ready for the next launch
    else:
        _finish(acc, acc2, ss, K, eps, in_scale, res_ptr, stride_rm, o_ptr, so, offs_m, offs_n,
                mask_m, mask_n, SWIGLU, HAS_NORM, HAS_RES)
    trace_mark(trace_ptr, 3)


@triton.jit
def _finish(acc, acc2, ss, K, eps, in_scale, res_ptr, stride_rm, o_ptr, so, offs_m, offs_n,
            mask_m, mask_n, SWIGLU: tl.constexpr, HAS_NORM: tl.constexpr,
            HAS_RES: tl.constexpr):
    """The epilogue: the folded norm, SwiGLU, residual, store in the output's dtype."""
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_NORM:
        rstd = in_scale / tl.sqrt(ss / K + eps)
        acc = acc * rstd[:, None]
        acc2 = acc2 * rstd[:, None]
    out = acc
    if SWIGLU:
        out = acc / (1.0 + tl.exp(-acc)) * acc2
    if HAS_RES:
        out += tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(o_ptr + offs_m[:, None] * so + offs_n[None, :], out.to(o_ptr.dtype.element_ty),
             mask=mask)


def prefetch_lines(k_split: int, block_n: int, programs: int, sms: int, element_size: int,
                   n_weights: int) -> int:
    """Lines of 128 bytes per weight row a program prefetches (:func:`prefetch_units`: the
    rows' first lines of its K range, about four programs per multiprocessor)."""
    row_lines = triton.cdiv(k_split * element_size, 128)
    return prefetch_units(row_lines, programs, block_n * n_weights * 128, sms, 4, 256)


_MAX_TILES = 1 << 16


def _counters(device: torch.device, tiles: int) -> torch.Tensor:
    """Arrival counters (int32 zeros), one per output tile, per device and stream
    (:func:`~mlra.kernels._triton_common.stream_counters`). Each launch leaves them at
    zero again."""
    if tiles > _MAX_TILES:
        raise ValueError(f"{tiles} output tiles exceed the {_MAX_TILES} counters")
    return stream_counters(device, "skinny", _MAX_TILES)


def default_skinny_config(M: int, K: int) -> SkinnyConfig:
    """One row: tiles of 32 outputs x 256 inputs (a dot product per output, no tensor cores);
    more rows: 32 x 128 tiles through ``tl.dot``. K is split until about two programs per
    multiprocessor exist (a weight of a few megabytes then still streams from every SM)."""
    block_k = 256 if M == 1 else 128
    block_k = min(block_k, max(16, next_pow2(K)))
    return SkinnyConfig(block_n=32, block_k=block_k, split_k=None, num_warps=4, num_stages=3,
                        waves=2.0, lane_sums=True)


TUNED_ENV = "MLRA_SKINNY_TUNED"
"""Environment variable naming a JSON file of tuned launch parameters (``bench_skinny.py
--sweep`` writes one); default: ``skinny_tuned.json`` beside this module."""


def row_block(rows: int) -> int:
    """The kernel's block of rows for ``rows`` rows: 1 (dot products), else a power of two of
    at least 16 (tensor-core tiles); tuned parameters are kept per row block."""
    return 1 if rows == 1 else max(16, next_pow2(rows))


def tuning_key(block_m: int, K: int, ns: Sequence[int], swiglu: bool) -> str:
    """The key of a projection shape in a tuned-parameters file."""
    return f"m{block_m}:k{K}:n{'x'.join(map(str, ns))}:{'swiglu' if swiglu else 'plain'}"


@functools.lru_cache(maxsize=8)
def _tuned_table(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # no table (or an unreadable one): the heuristics
        return {}


def _device_table(device: torch.device) -> dict:
    path = os.environ.get(TUNED_ENV) or str(Path(__file__).with_name("skinny_tuned.json"))
    return _tuned_table(path).get(torch.cuda.get_device_name(device), {})


def tuned_for_rows(device: torch.device, rows: int, K: int, ns: Sequence[int], swiglu: bool
                   ) -> bool:
    """Whether the tuned table lists exactly this shape at this row block for this device
    (above 16 rows the kernel runs only for such shapes)."""
    if device.type != "cuda":
        return False
    return tuning_key(row_block(rows), K, ns, swiglu) in _device_table(device)


def tuned_config(device: torch.device, block_m: int, K: int, ns: Sequence[int], swiglu: bool
                 ) -> dict | None:
    """Tuned launch parameters for this device (by name) and shape, or None."""
    if device.type != "cuda":
        return None
    return table_entry(_device_table(device), block_m, K, ns, swiglu)


def table_entry(table: dict, block_m: int, K: int, ns: Sequence[int], swiglu: bool
                ) -> dict | None:
    """The entry of one device's tuned ``table`` for a shape: its own, else the nearest tuned
    shape with the same rows, inputs, kind and number of weights, else None."""
    found = table.get(tuning_key(block_m, K, ns, swiglu))
    if found is not None or not table:
        return found
    best, best_gap = None, None
    for key, cfg in table.items():
        m, k, n, kind = key.split(":")
        outs = [int(v) for v in n[1:].split("x")]
        if (m, k, kind) != (f"m{block_m}", f"k{K}", "swiglu" if swiglu else "plain") or \
                len(outs) != len(ns):
            continue
        gap = abs(sum(outs) - sum(ns))
        if best_gap is None or gap < best_gap:
            best, best_gap = cfg, gap
    return best


def effective_config(device: torch.device, M: int, K: int, ns: Sequence[int], swiglu: bool,
                     config: SkinnyConfig | None = None) -> SkinnyConfig:
    """The launch parameters a call uses: the defaults, then the tuned table's entry for this
    device and shape, then the fields ``config`` sets."""
    base = default_skinny_config(M, K)
    tuned = tuned_config(device, row_block(M), K, ns, swiglu)
    if tuned is not None:
        base = dataclasses.replace(base, **{k: v for k, v in tuned.items() if v is not None})
    if config is None:
        return base
    return dataclasses.replace(base, **{f.name: getattr(config, f.name)
                                        for f in dataclasses.fields(config)
                                        if getattr(config, f.name) is not None})


def split_plan(K: int, block_k: int, tiles: int, sms: int, waves: float, split: int | None
               ) -> tuple[int, int]:
    """The split-K factor and the inputs per split of a launch of ``tiles`` output tiles:
    ``split`` if given, else about ``waves`` programs per multiprocessor (whole ``block_k``
    chunks per split)."""
    chunks = math.ceil(K / block_k)
    if split is None:
        split = max(1, min(chunks, round(waves * sms / max(1, tiles))))
    split = max(1, min(int(split), chunks))
    k_split = math.ceil(chunks / split) * block_k
    return math.ceil(K / k_split), k_split


def skinny_linear_triton(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    in_scale: float = 1.0,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    config: SkinnyConfig | None = None,
) -> tuple[torch.Tensor, ...]:
    """Triton implementation of :func:`mlra.kernels.reference.skinny_linear_ref` (same
    contract); ``config`` overrides launch parameters (benchmarks, tuning)."""
    lead = x.shape[:-1]
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"skinny_linear_triton takes at most {MAX_ROWS} rows, got {M}")
    ws_in = list(weights)
    n_w = 1 if swiglu else len(ws_in)
    dtype = ws_in[0].dtype
    outs = [torch.empty(M, w.shape[0], dtype=dtype, device=x.device) for w in ws_in[:n_w]]
    if M == 0:
        return tuple(o.view(*lead, -1) for o in outs)
    block_m = row_block(M)
    cfg = effective_config(x.device, M, K, [w.shape[0] for w in ws_in], swiglu, config)
    bn = cfg.block_n
    tiles_each = [triton.cdiv(w.shape[0], bn) for w in ws_in[:n_w]]
    tiles = sum(tiles_each)
    split, k_split = split_plan(K, cfg.block_k, tiles, device_sms(x), cfg.waves, cfg.split_k)
    if split > 1:
        ws = torch.empty(2 * split * block_m * tiles * bn + tiles * split * block_m,
                         dtype=torch.float32, device=x.device)
        cnt = _counters(x.device, tiles)
    else:
        ws = cnt = x2  # unused
    pad_w = ws_in + [ws_in[0]] * (MAX_WEIGHTS - len(ws_in))
    pad_o = outs + [outs[0]] * (MAX_WEIGHTS - len(outs))
    ns = [w.shape[0] for w in pad_w]
    t = tiles_each + [0] * (MAX_WEIGHTS - len(tiles_each))
    res = residual.reshape(M, -1) if residual is not None else x2
    g = norm_weight if norm_weight is not None else x2
    pdl = pdl_mode(x2)
    es = ws_in[0].element_size()
    pf = prefetch_lines(k_split, bn, tiles * split, device_sms(x), es, 2 if swiglu else 1) \
        if pdl > 1 else 0
    _skinny_kernel[(tiles, split)](
        x2, g, res, ws, cnt, *pad_w, *pad_o,
        M, K, ns[0], ns[1], ns[2], t[0], t[1],
        x2.stride(0), res.stride(0), *(w.stride(0) for w in pad_w), *(o.stride(0) for o in pad_o),
        float(eps), float(in_scale),
        NUM_W=n_w, SWIGLU=swiglu, HAS_NORM=norm_weight is not None,
        HAS_RES=residual is not None, SPLIT_K=split, K_SPLIT=k_split,
        NUM_STAGES=cfg.num_stages, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=cfg.block_k,
        ALIGNED=all(v % 8 == 0 for v in (K, x2.stride(0), *(w.stride(0) for w in pad_w))),
        PDL=pdl, PF_LINES=pf, LINE=128 // es, LANE_SUMS=bool(cfg.lane_sums),
        EARLY_NEXT=bool(cfg.early_next),
        trace_ptr=trace_slot("skinny", (tiles, split), x2),
        num_warps=cfg.num_warps, **launch_options(pdl),
    )
    return tuple(o.view(*lead, -1) for o in outs)
