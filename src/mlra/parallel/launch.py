"""Start a tensor-parallel group of local processes and watch it: ``launch(fn, tp=N)``.

``fn(ctx, *args)`` runs once per rank (``ctx`` is the rank's :class:`TPContext`); the return
values come back as a list in rank order. Under ``torchrun`` (``WORLD_SIZE`` already set) no
process is started: ``fn`` runs in this process as its rank and the list holds only its own
result at its rank's index, so the same code serves both launchers.

Robustness: the launcher watches every child. When one raises or dies (non-zero exit, signal),
the others are stopped (SIGTERM, then SIGKILL after a grace period) and :class:`RankFailedError`
names the rank that failed first and its error. A rank that hangs is caught by the collective
timeout of its peers (they raise, which stops the group) or by the launcher's ``deadline_s``.
Children die with the launcher (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import ctypes
import io
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlra import errors
from mlra.errors import MlraError
from mlra.parallel.runtime import (
    DEFAULT_TIMEOUT_S,
    TPContext,
    apply_safe_env,
    in_torchrun,
    init_tp,
    shutdown_tp,
)

GRACE_S = 5.0


class RankFailedError(MlraError):
    """A rank of a tensor-parallel group failed; the group was stopped.

    ``rank`` is the rank that failed first, ``error_type`` the name of its exception (None when
    it died without one, e.g. killed), ``details`` the traceback text when there is one.
    """

    def __init__(self, message: str, rank: int, error_type: str | None, details: str = "") -> None:
        super().__init__(message)
        self.rank = rank
        self.error_type = error_type
        self.details = details


def free_port() -> int:
    """A TCP port free on localhost right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _StdStreams:
    """The launcher's stdout and stderr (fds 1 and 2) as they are when the ranks start: sent
    with each process (a fork server's own descriptors may be older), installed in the rank."""

    def __init__(self, handles: tuple = (), sent: bool = False) -> None:
        self.handles, self.sent = handles, sent

    def __reduce__(self):
        from multiprocessing import reduction

        if self.sent:
            return (_StdStreams, (self.handles, True))
        handles = []
        for fd in (1, 2):
            try:
                os.fstat(fd)
            except OSError:
                continue
            handles.append((fd, reduction.DupFd(fd)))
        return (_StdStreams, (tuple(handles), True))

    def install(self) -> None:
        for target, handle in self.handles:
            fd = handle.detach()
            if fd != target:
                os.dup2(fd, target)
                os.close(fd)


def _serialise_result(result: Any) -> bytes:
    """``result`` as ``torch.save`` bytes that ``torch.load(weights_only=True)`` reads back.

    The launcher never unpickles arbitrary objects, so a rank may return only tensors, numbers,
    str/bytes, None, torch dtypes/devices/sizes and lists, tuples, sets and dicts of them; any
    other object (a dataclass, say: return ``dataclasses.asdict(x)``) fails this rank with a
    TypeError naming the offending type."""
    buf = io.BytesIO()
    torch.save(result, buf)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else type(exc).__name__
        raise TypeError(
            f"the rank's result holds {what}, which launch() cannot return: return only tensors, "
            "numbers, str, None and lists/tuples/dicts of them (e.g. dataclasses.asdict(obj))"
        ) from None
    return data


def _worker(
    rank: int,
    tp: int,
    port: int,
    workdir: str,
    fn: Callable[..., Any],
    args: tuple,
    backend: str | None,
    device: str | None,
    timeout_s: float,
    threads: int,
    env: dict[str, str],
    streams: _StdStreams,
) -> None:
    _die_with_parent()
    try:
        streams.install()
    except OSError:
        pass
    os.environ.clear()
    os.environ.update(env)  # the launcher's environment now, not the fork server's
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(tp), LOCAL_WORLD_SIZE=str(tp),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    out = Path(workdir)
    try:
        ctx = init_tp(tp, backend=backend, timeout_s=timeout_s, device=device)
        result = fn(ctx, *args)
        tmp = out / f"result_{rank}.tmp"
        tmp.write_bytes(_serialise_result(result))
        tmp.rename(out / f"result_{rank}.pt")
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the launcher
        report = {
            "rank": rank, "time": time.time(), "type": type(exc).__name__,
            "message": str(exc), "traceback": traceback.format_exc(),
        }
        (out / f"error_{rank}.json").write_text(json.dumps(report))
        os._exit(1)  # skip interpreter teardown (a peer may be stuck in a collective)
    finally:
        try:
            shutdown_tp()
        except Exception:  # noqa: BLE001
            pass


def launch(
    fn: Callable[..., Any],
    tp: int,
    args: tuple = (),
    backend: str | None = None,
    device: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    deadline_s: float | None = None,
) -> list[Any]:
    """Run ``fn(ctx, *args)`` on ``tp`` ranks and return their results in rank order.

    ``fn`` and ``args`` must be picklable (``fn`` a module-level function): the ranks are
    fresh processes (forked from a ``forkserver`` that has imported torch, or spawned).
    ``backend``: "nccl" on CUDA, "gloo" otherwise by default; ``device``: "cpu" forces CPU
    ranks. ``timeout_s`` bounds every collective; ``deadline_s`` (optional)
    bounds the whole run. Raises :class:`RankFailedError` when a rank fails. Results travel
    through ``torch.save`` and come back with ``torch.load(weights_only=True)`` (no arbitrary
    unpickling): ``fn`` may return tensors, numbers, str, None and lists/tuples/dicts of them;
    any other object fails its rank with a TypeError.
    """
    if not isinstance(tp, int) or tp < 1:
        raise errors.ConfigError(f"tp must be a positive integer, got {tp!r}")
    if in_torchrun():
        ctx = init_tp(tp, backend=backend, timeout_s=timeout_s, device=device)
        results: list[Any] = [None] * ctx.world_size
        results[ctx.rank] = fn(ctx, *args)
        return results
    use_cuda = device != "cpu" and backend != "gloo" and torch.cuda.is_available()
    if use_cuda and torch.cuda.device_count() < tp:
        raise errors.ConfigError(
            f"tp={tp} needs {tp} GPUs, {torch.cuda.device_count()} visible; pass device='cpu' "
            "(gloo) or use fewer ranks"
        )
    apply_safe_env()
    threads = max(1, (os.cpu_count() or 1) // tp)
    spawn = _context()
    with tempfile.TemporaryDirectory(prefix="mlra-tp-") as workdir:
        port = free_port()
        procs = [
            spawn.Process(
                target=_worker, name=f"mlra-tp-rank{r}",
                args=(r, tp, port, workdir, fn, args, backend, device, timeout_s, threads,
                      dict(os.environ), _StdStreams()),
            )
            for r in range(tp)
        ]
        for p in procs:
            p.start()
        try:
            failed = _watch(procs, deadline_s)
        finally:
            _stop(procs)
        if failed is not None:
            raise _failure(procs, workdir, failed, deadline_s)
        results = []
        for r in range(tp):
            path = Path(workdir) / f"result_{r}.pt"
            results.append(torch.load(path, weights_only=True))
        return results


def _context() -> mp.context.BaseContext:
    """``forkserver`` where available: one server process imports torch once and every rank is
    forked from it (a fraction of a second instead of a fresh interpreter importing torch per
    rank); the server never initialises CUDA, so CUDA ranks are safe. ``spawn`` elsewhere."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "mlra.parallel.launch"])
    return ctx


def _watch(procs: list, deadline_s: float | None) -> int | None:
    """Wait for every process; return the index of the first to fail (or -1 on deadline)."""
    end = None if deadline_s is None else time.monotonic() + deadline_s
    pending = {p.sentinel: i for i, p in enumerate(procs)}
    while pending:
        wait = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
        ready = multiprocessing.connection.wait(list(pending), timeout=wait)
        for sentinel in ready:
            i = pending.pop(sentinel)
            procs[i].join()
            if procs[i].exitcode != 0:
                return i
        if end is not None and time.monotonic() >= end and pending:
            return -1
    return None


def _stop(procs: list) -> None:
    """SIGTERM every live process, then SIGKILL what is left after the grace period."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + GRACE_S
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def _failure(procs: list, workdir: str, first: int, deadline_s: float | None) -> MlraError:
    """The error to raise: the earliest rank that raised, or the rank that died silently."""
    reports = []
    for path in Path(workdir).glob("error_*.json"):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    reports.sort(key=lambda r: r["time"])
    reported = {r["rank"] for r in reports}
    others = "; ".join(
        f"rank {r['rank']}: {r['type']}: {_first_line(r['message'])}" for r in reports[1:4]
    )
    suffix = f" (then {others})" if others else ""
    if first == -1 and not reports:
        return RankFailedError(
            f"the tensor-parallel group did not finish within {deadline_s:g} s; all ranks "
            "were stopped", -1, None,
        )
    silent = first if first >= 0 and first not in reported else None
    if silent is not None:
        code = procs[silent].exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with status {code}")
        msg = f"rank {silent} {how}; the other ranks were stopped"
        if reports:
            msg += f" (rank {reports[0]['rank']}: {_first_line(reports[0]['message'])})"
        return RankFailedError(msg, silent, None)
    root = reports[0]
    cls = getattr(errors, root["type"], None)
    message = f"rank {root['rank']} failed: {root['type']}: {_first_line(root['message'])}"
    if isinstance(cls, type) and issubclass(cls, MlraError) and cls is not MlraError:
        # a user error on a rank (bad degree, missing checkpoint) keeps its class and message
        return cls(root["message"])
    err = RankFailedError(message + suffix + "; the other ranks were stopped", root["rank"],
                          root["type"], root["traceback"])
    return err


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= 300 else line[:297] + "..."


__all__ = ["RankFailedError", "TPContext", "free_port", "launch"]
