"""The engine's thread: :class:`EngineLoop` runs :meth:`Engine.step` in a background thread and
hands each request's outputs to the asyncio side of the server.

Requests come in through a thread-safe queue of commands (add, abort); each request has a
:class:`Handle` whose ``sink`` receives its :class:`~mlra.serve.engine.StepOutput` objects (or
an exception) in the engine thread -- the server's sink forwards them to an asyncio queue. An
exception escaping a step (a broken tensor-parallel peer, a bug) is fatal: every open request
gets it and ``fatal`` says why.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlra.serve.engine import Engine, SamplingParams, StepOutput
from mlra.serve.metrics import ServeMetrics

Sink = Callable[[StepOutput | BaseException], None]


@dataclass
class Handle:
    """One request as the server sees it."""

    prompt: list[int]
    params: SamplingParams
    sink: Sink
    request_id: int | None = None
    submitted: float = field(default_factory=time.monotonic)
    last_token: float | None = None
    done: bool = False


class EngineLoop:
    """Runs ``engine`` in a daemon thread until :meth:`stop`.

    ``idle_hook`` is called about every ``idle_s`` seconds while there is nothing to do (the
    tensor-parallel heartbeat); ``on_fatal(exc)`` when a step raises.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: ServeMetrics | None = None,
        *,
        idle_hook: Callable[[], None] | None = None,
        idle_s: float = 0.5,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.engine, self.metrics = engine, metrics
        self.idle_hook, self.idle_s, self.on_fatal = idle_hook, idle_s, on_fatal
        self._cmds: queue.Queue = queue.Queue()
        self._handles: dict[int, Handle] = {}
        self._stop = threading.Event()
        self.fatal: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mlra-engine", daemon=True)

    # -- the asyncio side -----------------------------------------------------------------
    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    def submit(self, prompt: Sequence[int], params: SamplingParams, sink: Sink) -> Handle:
        """Queue a request; its outputs (or an exception) go to ``sink`` in the engine thread."""
        handle = Handle(list(prompt), params, sink)
        if self.fatal is not None:
            sink(RuntimeError(f"the engine stopped: {self.fatal}"))
            handle.done = True
            return handle
        self._cmds.put(("add", handle))
        return handle

    def abort(self, handle: Handle) -> None:
        """Stop a request (its pages are freed at the next step)."""
        if not handle.done:
            self._cmds.put(("abort", handle))

    def stop(self, timeout: float = 30.0) -> None:
        """Abort what is left, stop the thread and wait for it."""
        self._stop.set()
        self._cmds.put(("wake", None))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.fatal is None

    # -- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop.is_set():
                busy = engine.has_work()
                self._take_commands(block=not busy)
                if self._stop.is_set():
                    break
                if engine.has_work():
                    self._dispatch(engine.step())
                elif self.metrics is not None:
                    self._record(0)
            for handle in list(self._handles.values()):  # shutting down: answer the rest
                engine.abort(handle.request_id)
            while engine.has_work():
                self._dispatch(engine.step())
        except BaseException as exc:  # noqa: BLE001 - reported to every open request
            self.fatal = exc
            for handle in list(self._handles.values()):
                handle.done = True
                handle.sink(exc)
            self._handles.clear()
            self._fail_queued(exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        while True:
            try:
                kind, handle = self._cmds.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                handle.done = True
                handle.sink(exc)

    def _take_commands(self, block: bool) -> None:
        try:
            cmd = self._cmds.get(timeout=self.idle_s) if block else self._cmds.get_nowait()
        except queue.Empty:
            if block and self.idle_hook is not None:
                self.idle_hook()
            return
        while True:
            self._command(*cmd)
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                return

    def _command(self, kind: str, handle: Handle | None) -> None:
        if kind == "add":
            try:
                handle.request_id = self.engine.add_request(handle.prompt, handle.params)
            except Exception as exc:  # noqa: BLE001 - an invalid request fails alone
                handle.done = True
                handle.sink(exc)
                return
            self._handles[handle.request_id] = handle
            if self.metrics is not None:
                self.metrics.prompt_tokens.inc(len(handle.prompt))
        elif kind == "abort" and handle.request_id is not None:
            self.engine.abort(handle.request_id)

    def _dispatch(self, outputs: list[StepOutput]) -> None:
        now = time.monotonic()
        new = 0
        for out in outputs:
            handle = self._handles.get(out.request_id)
            if handle is None:
                continue
            if out.tokens and self.metrics is not None:
                if handle.last_token is None:
                    self.metrics.ttft.observe(now - handle.submitted)
                    for _ in out.tokens[1:]:
                        self.metrics.itl.observe(0.0)
                else:
                    for _ in out.tokens:
                        self.metrics.itl.observe(now - handle.last_token)
            if out.tokens:
                handle.last_token = now
                new += len(out.tokens)
            if out.finished:
                handle.done = True
                del self._handles[out.request_id]
                if self.metrics is not None:
                    self.metrics.requests.labels(out.finish_reason or "unknown").inc()
                    self.metrics.e2e.observe(now - handle.submitted)
            handle.sink(out)
        if self.metrics is not None:
            self._record(new)

    def _record(self, new_tokens: int) -> None:
        e = self.engine
        self.metrics.step(e.num_running, e.num_waiting, e.pages_used, e.preemptions, new_tokens)
