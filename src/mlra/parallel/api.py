"""The library's entry points at any tensor-parallel degree.

Inside a rank (under :func:`~mlra.parallel.launch` or ``torchrun``) a shard model is used
exactly like a full one::

    def work(ctx, path, prompts):
        model = mlra.load_checkpoint(path, tp=ctx)                # this rank's shard
        return mlra.generate(model, prompts, max_new_tokens=32)   # same call as on one device

    tokens = launch(work, tp=4, args=(path, prompts))[0]

:func:`generate_parallel` wraps exactly that (and reports every rank's cache), so a caller that
does not want to write a rank function gets the same tokens as :func:`mlra.generate` with one
extra argument, ``tp``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mlra.parallel.launch import launch
from mlra.parallel.runtime import TPContext
from mlra.parallel.shard import TensorParallelTransformer


@dataclass(frozen=True)
class RankReport:
    """What one rank holds: parameters and KV-cache bytes per token (all layers);
    ``cache_bytes_used`` is what the rank's cache held for the run's sequences (every prompt
    token and every generated token but the last, all layers)."""

    rank: int
    world_size: int
    device: str
    description: str
    params: int
    cache_elements_per_token_per_layer: int
    cache_bytes_per_token: int
    cache_bytes_used: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_report(model: torch.nn.Module, ctx: TPContext, cached_tokens: int = 0) -> RankReport:
    """The :class:`RankReport` of ``model`` (a shard or, at TP 1, a plain model); the cache
    figures are those of the :class:`~mlra.cache.PagedKVCache` built for it, with
    ``cached_tokens`` tokens held."""
    from mlra.cache import CacheLayout

    cfg = model.config
    layout = CacheLayout.from_config(cfg)
    param = next(model.parameters())
    per_token = layout.elements_per_token * cfg.n_layers * param.element_size()
    desc = model.shard.description if isinstance(model, TensorParallelTransformer) else "full"
    return RankReport(
        rank=ctx.rank, world_size=ctx.world_size, device=str(param.device), description=desc,
        params=sum(p.numel() for p in model.parameters()),
        cache_elements_per_token_per_layer=layout.elements_per_token,
        cache_bytes_per_token=per_token, cache_bytes_used=per_token * cached_tokens,
    )


def shared_seed(ctx: TPContext, seed: int | None) -> int | None:
    """``seed``, or when None and sampling needs one, rank 0's random seed sent to every rank
    (ranks must draw the same tokens)."""
    if seed is not None or ctx.world_size == 1:
        return seed
    return ctx.gather_objects(random.randrange(2**31))[0]


def _generate_rank(ctx: TPContext, path: str, prompts: list, kwargs: dict, load: dict):
    from mlra.checkpoints import load_checkpoint
    from mlra.generate import generate

    model = load_checkpoint(path, tp=ctx, **load)
    if kwargs.get("temperature", 0.0) > 0:
        kwargs = dict(kwargs, seed=shared_seed(ctx, kwargs.get("seed")))
    outs = generate(model, prompts, **kwargs)
    cached = sum(len(p) + max(len(o) - 1, 0) for p, o in zip(prompts, outs, strict=True))
    reports = ctx.gather_objects(rank_report(model, ctx, cached).to_dict())
    return outs, reports


def generate_parallel(
    checkpoint: str | Path,
    prompts: list[list[int]],
    tp: int,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    timeout_s: float = 300.0,
    **generate_kwargs: Any,
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """:func:`mlra.generate` on ``tp`` ranks: returns (new tokens per prompt, one report per
    rank as :class:`RankReport` dicts). ``device="cpu"`` forces gloo ranks on the CPU."""
    load = {"variant": variant, "dtype": dtype}
    results = launch(_generate_rank, tp, args=(str(checkpoint), prompts, generate_kwargs, load),
                     device=device, timeout_s=timeout_s)
    outs, reports = next(r for r in results if r is not None)
    return outs, reports
