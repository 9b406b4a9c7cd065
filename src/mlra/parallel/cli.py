"""``--tp N`` for command-line tools, set up once at the top of a command.

A command adds the option with :func:`add_tp_arg` and hands its work to :func:`run_command`::

    def run(args):                      # checks that need no model
        ...
        return run_command(args, _work)

    def _work(ctx, args):               # module level; called once per rank
        model = mlra.load_checkpoint(args.checkpoint, tp=ctx, device=ctx.device, ...)
        ...
        if ctx.is_main:
            print(result)

:func:`run_command` builds the rank's :class:`TPContext` once -- a single-rank context in this
process (no ``--tp`` or ``--tp 1``), this process's rank under ``torchrun``, or one per local
process it starts itself -- and calls ``work(ctx, args)`` exactly once in each rank. Every rank
computes the same tokens / losses; the work prints only where ``ctx.is_main``. There is no state
outside ``ctx`` and nothing re-enters the command.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from typing import Any

import torch

from mlra.devices import parse_device
from mlra.errors import ConfigError
from mlra.parallel.launch import launch
from mlra.parallel.runtime import TPContext, in_torchrun, init_tp, shutdown_tp

Work = Callable[[TPContext, argparse.Namespace], int | None]


def add_tp_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--tp N``."""
    parser.add_argument(
        "--tp", type=int, default=None, metavar="N",
        help="tensor-parallel degree: shard the model over N processes started here (one per "
        "GPU with NCCL; gloo on CPU with --device cpu or without GPUs). Under torchrun: the "
        "number of processes torchrun started (default: all of them; 1 otherwise)",
    )


def run_command(args: argparse.Namespace, work: Work) -> int:
    """Run ``work(ctx, args)`` once per rank of the group ``--tp`` / ``torchrun`` asks for
    (once, in this process, without either); returns rank 0's exit status."""
    tp = getattr(args, "tp", None)
    if tp is not None and tp < 1:
        raise ConfigError(f"--tp must be a positive integer, got {tp}")
    spec = getattr(args, "device", None)
    cpu = spec == "cpu" or not torch.cuda.is_available()
    if in_torchrun():
        ctx = init_tp(tp, device="cpu" if cpu else None)
        try:
            return _run_rank(ctx, work, args, cpu)
        finally:
            shutdown_tp()
    if tp in (None, 1):
        return int(work(TPContext(0, 1, parse_device(spec), None), args) or 0)
    _check_checkpoint_degree(getattr(args, "checkpoint", None), tp)
    if not cpu and torch.cuda.device_count() < tp:
        raise ConfigError(f"--tp {tp} needs {tp} GPUs, {torch.cuda.device_count()} visible; "
                          "use --device cpu or a smaller --tp")
    results = launch(_run_rank, tp, args=(work, args, cpu), device="cpu" if cpu else None)
    return int(results[0] or 0)


def _check_checkpoint_degree(path: str | None, tp: int) -> None:
    """Fail before starting any process when our checkpoint cannot be split ``tp`` ways
    (official checkpoints are checked by each rank once their config is inferred)."""
    if path is None:
        return
    from mlra.checkpoints import resolve_checkpoint_dir
    from mlra.checkpoints.format import read_model_config
    from mlra.parallel.plans import check_degree

    kind, directory = resolve_checkpoint_dir(path)
    if kind == "mlra":
        check_degree(read_model_config(directory), tp)


def _run_rank(ctx: TPContext, work: Work, args: argparse.Namespace, cpu: bool) -> int:
    """One rank: its own copy of the options (device = the rank's, a sampling seed shared by
    every rank), then the work."""
    args = copy.copy(args)
    if not cpu:
        args.device = str(ctx.device)
    if getattr(args, "temperature", 0) and getattr(args, "seed", None) is None:
        from mlra.parallel.api import shared_seed

        args.seed = shared_seed(ctx, None)  # every rank must draw the same tokens
    return int(work(ctx, args) or 0)


def report_ranks(model: torch.nn.Module, ctx: TPContext) -> None:
    """Under tensor parallelism (collective): attach every rank's :class:`RankReport` to
    ``model.tp_reports`` and print a one-line summary per rank on rank 0's stderr."""
    if ctx.world_size == 1:
        return
    from mlra.parallel.api import rank_report

    model.tp_reports = ctx.gather_objects(rank_report(model, ctx).to_dict())
    if ctx.is_main:
        print(f"tensor parallel over {ctx.world_size} ranks ({ctx.backend}):", file=sys.stderr)
        for r in model.tp_reports:
            print(f"  rank {r['rank']} on {r['device']}: {r['description']}; "
                  f"{r['params'] / 1e6:.1f}M parameters, KV cache "
                  f"{r['cache_bytes_per_token']} bytes/token", file=sys.stderr)


def cache_report(model: torch.nn.Module, cached_tokens: int) -> dict[str, Any]:
    """``{"tensor_parallel": {...}}`` with every rank's cache bytes for ``cached_tokens``
    tokens, for a command's JSON output; ``{}`` outside tensor parallelism."""
    reports = getattr(model, "tp_reports", None)
    if reports is None:
        return {}
    ranks = [dict(r, cache_bytes_used=r["cache_bytes_per_token"] * cached_tokens)
             for r in reports]
    return {"tensor_parallel": {"tp": len(ranks), "ranks": ranks}}
