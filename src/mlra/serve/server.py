"""Assemble and run a server: model -> engine -> engine loop -> FastAPI app -> uvicorn.

:func:`serve` runs on every rank of a tensor-parallel group: rank 0 builds the engine and the
HTTP front end, and broadcasts every model operation; the other ranks follow (see
:mod:`mlra.serve.executor`). SIGTERM drains: uvicorn stops accepting connections and waits for
the open ones (up to ``drain_s``), then the engine stops and the ranks leave together.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlra.data.tokenizers import Tokenizer
from mlra.errors import MlraError
from mlra.serve.engine import Engine, make_decoder
from mlra.serve.executor import BroadcastExecutor, Executor, follow


class ServerFailedError(MlraError):
    """The engine stopped on an error while serving."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "mlra"
    cache_tokens: int | None = None
    page_size: int = 64
    max_batch_size: int | None = 64
    prefill_chunk: int | None = 2048
    cuda_graphs: bool | None = None
    compile: bool = False
    chat_template: str | None = None
    drain_s: float = 30.0
    log_level: str = "warning"


def find_chat_template(directory: str | Path | None, explicit: str | None = None) -> str | None:
    """The chat template: ``explicit`` (a file), else the checkpoint's ``chat_template.jinja``
    or the ``chat_template`` of its ``tokenizer_config.json`` (Hugging Face's conventions)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise MlraError(f"--chat-template {explicit}: no such file")
        return path.read_text()
    if directory is None:
        return None
    directory = Path(directory)
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text()
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text()).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            return None
        return template if isinstance(template, str) else None
    return None


def serve(model: torch.nn.Module, tokenizer: Tokenizer | None, options: ServeOptions,
          ctx: Any = None) -> int:
    """Serve ``model`` until SIGTERM / Ctrl-C (rank 0), or follow rank 0 (other ranks)."""
    cfg = model.config
    decoder = make_decoder(model, options.cache_tokens or cfg.max_seq_len * 16,
                           options.page_size, cuda_graphs=options.cuda_graphs,
                           compile=options.compile)
    tp = ctx is not None and ctx.world_size > 1
    pids = ctx.gather_objects(os.getpid()) if tp else [os.getpid()]
    if tp and not ctx.is_main:
        follow(Executor(decoder), ctx)
        return 0
    executor = BroadcastExecutor(decoder, ctx) if tp else Executor(decoder)
    return _serve_main(model, tokenizer, options, executor, ctx if tp else None, pids)


def _serve_main(model, tokenizer, options: ServeOptions, executor: Executor, ctx,
                pids: list[int]) -> int:
    import uvicorn

    from mlra.serve.app import ServerState, create_app
    from mlra.serve.loop import EngineLoop
    from mlra.serve.metrics import ServeMetrics

    cfg = model.config
    vocab_limit = None
    if tokenizer is not None and tokenizer.vocab_size < cfg.vocab_size:
        vocab_limit = tokenizer.vocab_size
    engine = Engine(model, max_batch_size=options.max_batch_size,
                    prefill_chunk=options.prefill_chunk, vocab_limit=vocab_limit,
                    executor=executor)
    metrics = ServeMetrics(engine.cache.num_pages)
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        print(f"mlra serve: the engine stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        if server is not None:
            server.should_exit = True

    hook = executor.heartbeat if isinstance(executor, BroadcastExecutor) else None
    loop = EngineLoop(engine, metrics, idle_hook=hook, on_fatal=on_fatal)
    info: dict[str, Any] = {"model": options.model_name, "pid": os.getpid(),
                            "tp": 1 if ctx is None else ctx.world_size}
    if ctx is not None:
        info["ranks"] = [{"rank": r, "pid": p} for r, p in enumerate(pids)]
    state = ServerState(loop=loop, metrics=metrics, model_name=options.model_name,
                        max_model_len=cfg.max_seq_len, vocab_size=cfg.vocab_size,
                        tokenizer=tokenizer, chat_template=options.chat_template, info=info)
    if isinstance(executor, BroadcastExecutor):
        state.on_shutdown.append(lambda: _stop_followers(executor, loop))
    app = create_app(state)
    config = uvicorn.Config(app, host=options.host, port=options.port,
                            log_level=options.log_level,
                            timeout_graceful_shutdown=int(options.drain_s))
    server = _DrainingServer(config)
    loop.start()
    print(f"mlra serve: {options.model_name} ({cfg.name}, {engine.cache.num_pages} pages of "
          f"{engine.cache.page_size} tokens) on http://{options.host}:{options.port}",
          file=sys.stderr, flush=True)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind; say it as a user error below
        if server.started:
            raise
    finally:
        loop.stop()
    if loop.fatal is not None:
        raise ServerFailedError(f"the engine stopped: {type(loop.fatal).__name__}: "
                                f"{loop.fatal}")
    if not server.started:
        raise ServerFailedError(f"could not listen on {options.host}:{options.port} (is the "
                                "port in use?)")
    return 0


def _draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """SIGTERM is the normal way to stop a server: once the open requests are drained the
        process exits 0 (uvicorn re-raises the signal, which would end it with -15)."""

        def handle_exit(self, sig: int, frame) -> None:
            if sig == signal.SIGTERM:
                self.should_exit = True
                return
            super().handle_exit(sig, frame)

    return DrainingServer


def _DrainingServer(config):  # noqa: N802 - a class made on first use (uvicorn is optional)
    return _draining_server_class()(config)


def _stop_followers(executor: BroadcastExecutor, loop) -> None:
    if loop.fatal is None:
        executor.stop()
