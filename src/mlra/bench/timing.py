"""Device timing: CUDA events around each call (L2 flushed before each in :func:`time_cuda`),
median of many; wall-clock on the CPU for smoke tests; CUDA-graph capture for timing steps.

The L2 flush reads a buffer larger than the L2 (``read``, the default) so the timed call
finds none of its inputs cached and nothing dirty to write back. Zeroing it instead
(``write``, the usual practice of ``triton.testing.do_bench``) leaves the L2 full of dirty
lines that the timed call pays to write back: 3.5-8 us per call on an H200
(``benchmarks/decode/results/h200/fixed``), a quarter of a 30 us decode call -- a cost of the
benchmark, not of the kernel, which in a model step follows kernels that read weights.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call device time in microseconds over ``reps`` timed calls."""

    median_us: float
    p10_us: float
    p90_us: float
    reps: int

    def to_dict(self) -> dict:
        return asdict(self)


FLUSH_MODES = ("read", "write")


def l2_flush_buffer(device: torch.device | str = "cuda", nbytes: int = 256 << 20) -> torch.Tensor:
    """A buffer larger than any L2 cache; reading (or writing) it evicts the cached inputs."""
    return torch.zeros(nbytes // 4, dtype=torch.float32, device=device)


def flush_l2(buf: torch.Tensor, mode: str = "read") -> None:
    """Evict the L2 by reading ``buf`` (one reduction kernel, leaving clean lines) or by
    zeroing it (``write``: dirty lines), see the module docstring."""
    if mode == "read":
        buf.sum()
    elif mode == "write":
        buf.zero_()
    else:
        raise ValueError(f"flush mode must be one of {FLUSH_MODES}, got {mode!r}")


def time_cuda(
    fn: Callable[[], object], reps: int = 100, warmup: int = 5,
    flush: torch.Tensor | None = None, host_shield_cycles: int = 1_000_000,
    flush_mode: str = "read",
) -> Timing:
    """Median device time of ``fn()``. Before each call the L2 flush (``flush_mode``, see
    :func:`flush_l2`) and a short device-side spin (``host_shield_cycles``, ~0.5 ms) are
    queued ahead of the start event, so the host enqueues ``fn``'s launches while the device
    is busy and launch overhead is not counted: the number is the device time of the call, as
    inside a CUDA graph."""
    if flush_mode not in FLUSH_MODES:
        raise ValueError(f"flush mode must be one of {FLUSH_MODES}, got {flush_mode!r}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection pause could outlast the shield
    for i in range(reps):
        if flush is not None:
            flush_l2(flush, flush_mode)
        if host_shield_cycles:
            torch.cuda._sleep(host_shield_cycles)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    if gc_was_enabled:
        gc.enable()
    times = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends, strict=True))
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Timing(statistics.median(times), q[0], q[-1], reps)


def copy_bandwidth(device: torch.device | str = "cuda", nbytes: int | None = None,
                   reps: int = 20) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read plus written
    (default size: 2 GiB on a GPU, 64 MiB elsewhere)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    nbytes = nbytes or ((2 << 30) if cuda else (64 << 20))
    src = torch.randint(0, 2**15, (nbytes // 2,), dtype=torch.int16, device=device)
    dst = torch.empty_like(src)
    if cuda:
        seconds = time_cuda(lambda: dst.copy_(src), reps=reps, warmup=3).median_us * 1e-6
    else:
        seconds = median_seconds(lambda: dst.copy_(src), device, reps)
    return 2 * nbytes / seconds


def synchronize(device: torch.device) -> None:
    """Wait for ``device`` (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of whole ``fn()`` calls, launches included (CUDA events on a GPU, wall
    clock elsewhere); no warm-up."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graphed(fn: Callable[[], object], device: torch.device, use_graph: bool = True
            ) -> tuple[Callable[[], object], str | None]:
    """(callable to time, error or None): ``fn`` captured in a CUDA graph (after one warm-up
    call on a side stream) and the graph's ``replay``; ``fn`` itself off CUDA, without
    ``use_graph`` or when the capture fails (the error says why)."""
    if not use_graph or device.type != "cuda":
        return fn, None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        synchronize(device)
        return graph.replay, None
    except Exception as exc:  # the caller times fn eagerly and records why
        synchronize(device)
        return fn, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


@contextlib.contextmanager
def env_vars(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block (restored after), e.g. to time
    the same kernels with and without ``MLRA_PDL`` in one run."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
