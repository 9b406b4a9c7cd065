"""``--tp N`` for command-line tools: run a command's own ``run(args)`` on every rank.

A command adds the option with :func:`add_tp_arg`, calls :func:`run_parallel` at the top of its
``run`` (it returns None when the command should simply go on in this process) and loads its
model with :func:`load_model`. ``run_parallel`` starts the N local processes itself (or joins
``torchrun``'s), makes the rank's context current, silences stdout on ranks other than 0 and
calls the same ``run(args)`` in every rank; ``load_model`` then returns the rank's shard, so
the rest of the command is unchanged. Every rank computes the same tokens / losses; rank 0
prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from mlra.errors import ConfigError
from mlra.parallel.launch import launch
from mlra.parallel.runtime import TPContext, in_torchrun, init_tp

_CURRENT: TPContext | None = None


def current() -> TPContext | None:
    """The TP context of this process while a command runs under :func:`run_parallel`."""
    return _CURRENT


def add_tp_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--tp N``."""
    parser.add_argument(
        "--tp", type=int, default=None, metavar="N",
        help="tensor-parallel degree: shard the model over N processes started here (one per "
        "GPU with NCCL; gloo on CPU with --device cpu or without GPUs). Under torchrun: the "
        "number of processes torchrun started (default: all of them; 1 otherwise)",
    )


def run_parallel(args: argparse.Namespace, run: Callable[[argparse.Namespace], int]) -> int | None:
    """Run ``run(args)`` on every rank when ``--tp`` > 1 or under torchrun; None otherwise
    (the caller goes on in this process)."""
    if _CURRENT is not None:
        return None  # already inside a rank
    tp = getattr(args, "tp", None)
    if tp is not None and tp < 1:
        raise ConfigError(f"--tp must be a positive integer, got {tp}")
    if not in_torchrun() and tp in (None, 1):
        return None
    cpu = getattr(args, "device", None) == "cpu" or not torch.cuda.is_available()
    if in_torchrun():
        return _rank_main(None, args, run, cpu)
    _check_checkpoint_degree(getattr(args, "checkpoint", None), tp)
    if not cpu and torch.cuda.device_count() < tp:
        raise ConfigError(f"--tp {tp} needs {tp} GPUs, {torch.cuda.device_count()} visible; "
                          "use --device cpu or a smaller --tp")
    results = launch(_rank_main, tp, args=(args, run, cpu), device="cpu" if cpu else None)
    return int(results[0] or 0)


def _check_checkpoint_degree(path: str | None, tp: int) -> None:
    """Fail before starting any process when our checkpoint cannot be split ``tp`` ways
    (official checkpoints are checked by each rank once their config is inferred)."""
    if path is None:
        return
    from mlra.checkpoints import resolve_checkpoint_dir
    from mlra.io import read_model_config
    from mlra.parallel.plans import check_degree

    kind, directory = resolve_checkpoint_dir(path)
    if kind == "mlra":
        check_degree(read_model_config(directory), tp)


def _rank_main(
    ctx: TPContext | None, args: argparse.Namespace, run: Callable, cpu: bool
) -> int:
    global _CURRENT
    if ctx is None:  # under torchrun
        ctx = init_tp(getattr(args, "tp", None), device="cpu" if cpu else None)
    _CURRENT = ctx
    if getattr(args, "temperature", 0) and getattr(args, "seed", None) is None:
        from mlra.parallel.api import shared_seed

        args.seed = shared_seed(ctx, None)  # every rank must draw the same tokens
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the rank
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    if not cpu:
        args.device = str(ctx.device)
    try:
        return int(run(args) or 0)
    except BaseException:
        sys.stderr = sys.__stderr__  # a failing rank's own message must be seen (torchrun)
        raise
    finally:
        sys.stdout.flush()
        _CURRENT = None


def load_model(
    path: str,
    fallback: Callable[..., torch.nn.Module],
    *,
    device: Any = "cpu",
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """The rank's shard when a TP context is current (and a one-line summary of every rank on
    rank 0's stderr), else ``fallback(path, device=..., dtype=..., variant=..., **kwargs)``."""
    ctx = _CURRENT
    if ctx is None:
        return fallback(path, device=device, dtype=dtype, variant=variant, **kwargs)
    from mlra.parallel.api import load_checkpoint_shard, rank_report

    model = load_checkpoint_shard(path, ctx, variant=variant, dtype=dtype,
                                  latent_scaling=kwargs.get("latent_scaling"))
    model.tp_reports = ctx.gather_objects(rank_report(model, ctx).to_dict())
    if ctx.is_main:
        print(f"tensor parallel over {ctx.world_size} ranks ({ctx.backend}):", file=sys.stderr)
        for r in model.tp_reports:
            print(f"  rank {r['rank']} on {r['device']}: {r['description']}; "
                  f"{r['params'] / 1e6:.1f}M parameters, KV cache "
                  f"{r['cache_bytes_per_token']} bytes/token", file=sys.stderr)
    return model


def cache_report(model: torch.nn.Module, cached_tokens: int) -> dict[str, Any]:
    """``{"tensor_parallel": {...}}`` with every rank's cache bytes for ``cached_tokens``
    tokens, for a command's JSON output; ``{}`` outside tensor parallelism."""
    reports = getattr(model, "tp_reports", None)
    if reports is None:
        return {}
    ranks = [dict(r, cache_bytes_used=r["cache_bytes_per_token"] * cached_tokens)
             for r in reports]
    return {"tensor_parallel": {"tp": len(ranks), "ranks": ranks}}
