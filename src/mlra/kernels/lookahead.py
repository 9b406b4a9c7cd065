"""L2 lookahead: weights a later kernel of a decode step reads, pulled into L2 ahead of time.

A batch-1 decode step streams weight bytes, except where latency-bound kernels run: the
attention over a short context, its split merge, the head outputs. There DRAM idles. A
lookahead launch placed before those kernels asks the copy engines of the multiprocessors
(bulk L2 prefetches, ``cp.async.bulk.prefetch.L2``, Hopper) to pull the weights of the
kernels that follow them -- the output projection and the first rows of every MLP program's
range -- into L2, so those kernels start on L2 hits instead of on a cold stream.

The launch changes no value (a prefetch is a hint; L2 is where global memory is coherent)
and does not delay the kernel after it (it lets it launch at once and only waits for its own
predecessor before exiting, which keeps the launch chain's ordering). It runs only where the
decode-step kernels launch with PDL and L2 prefetch (:func:`~mlra.kernels._triton_common.
pdl_mode` 2: Hopper, Triton); elsewhere :func:`l2_lookahead` does nothing.

``MLRA_LOOKAHEAD_MB`` sets the budget in megabytes (0: no lookahead launch).

This module plans byte ranges and never imports Triton; the kernel is
:mod:`mlra.kernels.triton_lookahead`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

LOOKAHEAD_ENV = "MLRA_LOOKAHEAD_MB"
"""Megabytes of later kernels' weights a batch-1 decode step prefetches into L2 before its
attention (0 turns the lookahead launch off); read when a step is built or captured."""

DEFAULT_LOOKAHEAD_MB = 24.0
"""Default budget: what the H200 fetches while the latency-bound kernels of one layer run at
short contexts, without evicting it again before use (L2 holds 50 MB)."""

METHOD_ENV = "MLRA_LOOKAHEAD_METHOD"
"""``bulk`` (default: bulk prefetches by the copy engines) or ``lines`` (128-byte line
prefetches by the threads)."""

PLACE_ENV = "MLRA_LOOKAHEAD_AT"
"""Where a decode layer launches its lookahead: ``attention`` (default: after the query
preparation, before the attention kernel) or ``output`` (after the attention, before the head
outputs and the output projection)."""

ALIGN = 16
"""Bulk prefetches take 16-byte aligned addresses and sizes that are multiples of 16."""


@dataclasses.dataclass(frozen=True)
class Span:
    """``count`` byte ranges of ``length`` bytes each in ``tensor``'s storage: range ``i``
    starts ``offset + (i * spread // count) * stride`` bytes from its first element
    (``spread`` defaults to ``count``: ranges ``stride`` bytes apart; ``spread = H`` with
    ``stride`` one unit's bytes: the starts of ``count`` programs sharing ``H`` units as
    ``p H // count``)."""

    tensor: torch.Tensor
    length: int
    count: int = 1
    stride: int = 0
    offset: int = 0
    spread: int | None = None

    def starts(self) -> list[int]:
        """Byte offsets of the ranges from the tensor's first element."""
        spread = self.count if self.spread is None else self.spread
        return [self.offset + (i * spread // self.count) * self.stride for i in range(self.count)]

    @property
    def nbytes(self) -> int:
        return self.length * self.count

    def address(self) -> int:
        return self.tensor.data_ptr() + self.offset

    def aligned(self) -> Span | None:
        """The same ranges shrunk to 16-byte boundaries (the start rounded up, the length
        down, keeping every range inside its original bytes); None when nothing is left or
        the ranges start at different alignments."""
        start = self.address()
        skip = -start % ALIGN
        if self.count > 1 and self.stride % ALIGN:
            return None
        length = (self.length - skip) // ALIGN * ALIGN
        if length <= 0 or self.count <= 0:
            return None
        return dataclasses.replace(self, offset=self.offset + skip, length=length)


def lookahead_budget() -> int:
    """The lookahead budget in bytes (:data:`LOOKAHEAD_ENV`, default
    :data:`DEFAULT_LOOKAHEAD_MB`); 0 when turned off."""
    raw = os.environ.get(LOOKAHEAD_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_LOOKAHEAD_MB
    except ValueError as exc:
        raise ValueError(f"{LOOKAHEAD_ENV}={raw!r} is not a number of megabytes "
                         f"(0 turns the L2 lookahead off)") from exc
    return max(0, int(mb * (1 << 20)))


def lookahead_lines() -> bool:
    """Whether the lookahead prefetches by lines (:data:`METHOD_ENV`)."""
    method = os.environ.get(METHOD_ENV, "bulk").strip() or "bulk"
    if method not in ("bulk", "lines"):
        raise ValueError(f"{METHOD_ENV}={method!r}: use bulk or lines")
    return method == "lines"


def lookahead_place() -> str:
    """Where a decode layer launches its lookahead (:data:`PLACE_ENV`)."""
    place = os.environ.get(PLACE_ENV, "attention").strip() or "attention"
    if place not in ("attention", "output"):
        raise ValueError(f"{PLACE_ENV}={place!r}: use attention or output")
    return place


def whole(tensor: torch.Tensor) -> Span:
    """All bytes of a contiguous ``tensor`` as one range."""
    if not tensor.is_contiguous():
        raise ValueError("whole() takes a contiguous tensor")
    return Span(tensor, tensor.numel() * tensor.element_size())


def mlp_row_spans(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                  programs: int, rows: int) -> list[Span]:
    """The first ``rows`` hidden units of each of ``programs`` ranges, as the one-launch MLP
    kernel streams them (program ``p`` owns units ``[p H // P, (p + 1) H // P)``): gate rows,
    up rows and down columns (``w_down`` column-major), one span set per weight."""
    hidden = w_gate.shape[0]
    programs = max(1, min(programs, hidden))
    rows = min(rows, hidden // programs)
    if rows <= 0:
        return []
    spans = []
    for w, stride_units in ((w_gate, w_gate.stride(0)), (w_up, w_up.stride(0)),
                            (w_down, w_down.stride(1))):
        unit = stride_units * w.element_size()
        spans.append(Span(w, rows * unit, programs, unit, spread=hidden))
    return spans


def mlp_spans_within(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                     programs: int, budget: int) -> list[Span]:
    """:func:`mlp_row_spans` with as many rows per program as ``budget`` bytes hold."""
    unit = sum(w.element_size() * s for w, s in ((w_gate, w_gate.stride(0)),
                                                  (w_up, w_up.stride(0)),
                                                  (w_down, w_down.stride(1))))
    rows = budget // max(1, unit * max(1, min(programs, w_gate.shape[0])))
    return mlp_row_spans(w_gate, w_up, w_down, programs, rows)


def plan(budget: int, wholes: Sequence[torch.Tensor] = (),
         mlp: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
         programs: int = 1) -> list[Span]:
    """What a lookahead launch of ``budget`` bytes prefetches: each of ``wholes`` (contiguous
    tensors, in order) that still fits, then with what is left the first rows of the MLP
    programs' ranges (``mlp`` = gate, up, column-major down; ``programs`` its grid)."""
    spans = []
    for t in wholes:
        span = whole(t)
        if span.nbytes <= budget:
            spans.append(span)
            budget -= span.nbytes
    if mlp is not None and budget > 0:
        spans += mlp_spans_within(*mlp, programs, budget)
    return spans
