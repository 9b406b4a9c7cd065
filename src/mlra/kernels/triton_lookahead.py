"""The L2 lookahead launch (:mod:`mlra.kernels.lookahead`): bulk L2 prefetches of up to
:data:`MAX_SPANS` span sets, cut into chunks of at most ``CHUNK`` bytes, one chunk per lane
of one-warp programs.

The kernel lets the next kernel in the stream launch first (``griddepcontrol.launch_
dependents``), issues its prefetches and then waits for its own predecessor
(``griddepcontrol.wait``) before it exits: the kernel after it waits for this one, so it
still runs after everything before it. Under the Triton interpreter (tests) a ``RECORD`` form
writes each chunk's address and size instead of prefetching.

Import only after checking :func:`mlra.kernels.triton_available`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import (
    INTERPRET,
    device_sms,
    launch_options,
    pdl_launch_next,
    pdl_mode,
    pdl_wait,
)
from mlra.kernels.lookahead import Span

MAX_SPANS = 4
#: bytes of one bulk prefetch
CHUNK = 16384
#: chunks in flight per program (one per lane of its single warp)
LANES = 32


@triton.jit
def _bulk_prefetch_l2(addr, size, ok):
    """One bulk L2 prefetch of ``size`` bytes at ``addr`` per lane where ``ok``."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $3, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; }  // dummy $0",
        "=r,l,r,r", [addr, size, ok.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _line_prefetch_l2(addr, size, ok, CHUNK: tl.constexpr):
    """The same bytes as :func:`_bulk_prefetch_l2` as 128-byte line prefetches, one line of
    every lane's chunk per step."""
    for j in tl.static_range(0, CHUNK, 128):
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p prefetch.global.L2 [$1]; }  // dummy $0",
            "=r,l,r", [addr + j, (ok & (j < size)).to(tl.int32)], dtype=tl.int32,
            is_pure=False, pack=1)


@triton.jit
def _chunk(c, start, addr, count, stride, spread, length, CHUNK: tl.constexpr):
    """Address and size of chunk ``c`` (global index) of one span set whose chunks start at
    global index ``start``; size 0 outside the set. Range ``i`` of the set starts at
    ``addr + (i * spread // count) * stride`` (:class:`~mlra.kernels.lookahead.Span`)."""
    per = tl.maximum((length + CHUNK - 1) // CHUNK, 1)
    local = c - start
    inside = (local >= 0) & (local < count * per) & (length > 0)
    local = tl.where(inside, local, 0)
    item = local // per
    piece = local - item * per
    first = item.to(tl.int64) * spread // tl.maximum(count, 1)
    a = addr + first * stride + piece.to(tl.int64) * CHUNK
    size = tl.minimum(length - piece * CHUNK, CHUNK)
    return tl.where(inside, a, 0), tl.where(inside, size, 0)


@triton.jit(do_not_specialize=["a0", "n0", "s0", "p0", "l0", "a1", "n1", "s1", "p1", "l1",
                               "a2", "n2", "s2", "p2", "l2", "a3", "n3", "s3", "p3", "l3"])
def _lookahead_kernel(a0, n0, s0, p0, l0, a1, n1, s1, p1, l1, a2, n2, s2, p2, l2,
                      a3, n3, s3, p3, l3, rec_ptr,
                      CHUNK: tl.constexpr, LANES: tl.constexpr, PDL: tl.constexpr,
                      RECORD: tl.constexpr, LINES: tl.constexpr = False):
    pdl_launch_next(PDL)  # nothing here is waited for by the next kernel's data
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    c0 = n0 * ((l0 + CHUNK - 1) // CHUNK)
    c1 = n1 * ((l1 + CHUNK - 1) // CHUNK)
    c2 = n2 * ((l2 + CHUNK - 1) // CHUNK)
    c3 = n3 * ((l3 + CHUNK - 1) // CHUNK)
    total = c0 + c1 + c2 + c3
    lanes = tl.arange(0, LANES)
    for first in range(pid * LANES, total, nprog * LANES):
        c = first + lanes
        x0, z0 = _chunk(c, 0, a0, n0, s0, p0, l0, CHUNK)
        x1, z1 = _chunk(c, c0, a1, n1, s1, p1, l1, CHUNK)
        x2, z2 = _chunk(c, c0 + c1, a2, n2, s2, p2, l2, CHUNK)
        x3, z3 = _chunk(c, c0 + c1 + c2, a3, n3, s3, p3, l3, CHUNK)
        addr = x0 + x1 + x2 + x3  # one set holds chunk c, the others give 0
        size = z0 + z1 + z2 + z3
        ok = (c < total) & (size > 0)
        if RECORD:
            tl.store(rec_ptr + 2 * c, addr, mask=ok)
            tl.store(rec_ptr + 2 * c + 1, size.to(tl.int64), mask=ok)
        elif LINES:
            _line_prefetch_l2(addr, size, ok, CHUNK)
        else:
            _bulk_prefetch_l2(addr, size, ok)
    pdl_wait(PDL)


def _args(spans: Sequence[Span]) -> list[int]:
    if len(spans) > MAX_SPANS:
        raise ValueError(f"at most {MAX_SPANS} span sets per lookahead launch, got {len(spans)}")
    args: list[int] = []
    for span in spans:
        spread = span.count if span.spread is None else span.spread
        args += [span.address(), span.count, span.stride, spread, span.length]
    return args + [0, 0, 0, 0, 0] * (MAX_SPANS - len(spans))


def total_chunks(spans: Sequence[Span], chunk: int = CHUNK) -> int:
    return sum(s.count * -(-s.length // chunk) for s in spans if s.length > 0)


def lookahead_triton(spans: Sequence[Span], ref: torch.Tensor, record: bool = False,
                     chunk: int = CHUNK, lines: bool = False) -> torch.Tensor | None:
    """Launch the lookahead for ``spans`` (already 16-byte aligned, see
    :meth:`Span.aligned`) on ``ref``'s device and stream. ``record``: write each chunk's
    (address, size) to a returned ``[chunks, 2]`` int64 tensor instead of prefetching (the
    form the interpreter runs). ``lines``: 128-byte line prefetches instead of bulk ones.
    Nothing but the one kernel is launched (no allocation kernel that would break the PDL
    chain)."""
    chunks = total_chunks(spans, chunk)
    if chunks == 0:
        return torch.zeros(0, 2, dtype=torch.int64, device=ref.device) if record else None
    if not record and INTERPRET:
        return None  # the interpreter has no inline assembly
    rec = torch.zeros(chunks, 2, dtype=torch.int64, device=ref.device) if record else ref
    pdl = 0 if record else pdl_mode(ref)
    grid = (max(1, min(-(-chunks // LANES), device_sms(ref))),)
    _lookahead_kernel[grid](*_args(spans), rec, CHUNK=chunk, LANES=LANES, PDL=pdl,
                            RECORD=record, LINES=lines, num_warps=1, **launch_options(pdl))
    return rec if record else None
