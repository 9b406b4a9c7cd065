"""Per-program timestamps of the decode-step kernels, for finding what holds a step's critical
path when kernels overlap (programmatic dependent launch): a profiler sees when a launch
starts and ends, not when its programs get past their dependency wait.

While a :class:`KernelTrace` is active (``with trace.active():``), each traced Triton launch
takes a slot of ``programs x 4`` int64 entries and every program writes the GPU's global
nanosecond timer (``%globaltimer``) at four marks (:data:`MARKS`): on entry, after its PDL wait,
when it lets the next launch start (its main loop done), and on exit. A CUDA graph captured
while the trace is active keeps the slots it was given; each replay overwrites them, so read
(:meth:`KernelTrace.launches`) after the replay of interest. Outside a trace the kernels are
compiled without the marks (``trace_ptr=None``). For benchmarks (``benchmarks/e2e_decode/
trace_step.py``); the interpreter has no timer, so nothing is traced there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch

MARKS = ("start", "wait_done", "main_done", "end")
"""The four timestamps of a program, in the order the kernels write them (a kernel without a
PDL wait or trigger writes the same time for both marks around where those would be)."""

_ACTIVE: list[KernelTrace] = []


@dataclasses.dataclass
class TracedLaunch:
    """One launch's programs: ``times[program, mark]`` in nanoseconds of the GPU's timer."""

    name: str
    times: torch.Tensor

    def first(self, mark: str) -> int:
        """The earliest time any program reached ``mark``."""
        return int(self.times[:, MARKS.index(mark)].min())

    def last(self, mark: str) -> int:
        """The latest time any program reached ``mark``."""
        return int(self.times[:, MARKS.index(mark)].max())


class KernelTrace:
    """A device buffer of program timestamps and the launches that wrote them, in launch
    order. ``capacity``: programs over all traced launches (four int64 entries each)."""

    def __init__(self, device: torch.device | str, capacity: int = 1 << 19):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.buffer = torch.zeros(capacity, len(MARKS), dtype=torch.int64, device=self.device)
        self._slots: list[tuple[str, int, int]] = []  # name, first program, programs
        self._used = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[KernelTrace]:
        """Trace the launches made inside the block (slots are taken afresh: launches made
        in an earlier block are forgotten)."""
        self._slots.clear()
        self._used = 0
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.remove(self)

    def slot(self, name: str, programs: int) -> torch.Tensor:
        """The buffer rows of the next launch, ``programs`` of them."""
        if self._used + programs > self.buffer.shape[0]:
            raise ValueError(f"kernel trace full: {self.buffer.shape[0]} programs; make the "
                             f"KernelTrace with a larger capacity")
        rows = self.buffer[self._used:self._used + programs]
        self._slots.append((name, self._used, programs))
        self._used += programs
        return rows

    def launches(self) -> list[TracedLaunch]:
        """The traced launches, in launch order, with their programs' timestamps (copied to
        the host; synchronizes)."""
        host = self.buffer[:self._used].cpu()
        return [TracedLaunch(name, host[first:first + n]) for name, first, n in self._slots]


def trace_slot(name: str, grid: Sequence[int], like: torch.Tensor) -> torch.Tensor | None:
    """The ``trace_ptr`` argument of a launch of ``grid`` on ``like``'s device: the active
    trace's next slot, or None (no trace active on that device, or the interpreter)."""
    if not _ACTIVE or not like.is_cuda:
        return None
    trace = _ACTIVE[-1]
    if trace.device != like.device:
        return None
    return trace.slot(name, math.prod(int(g) for g in grid))
