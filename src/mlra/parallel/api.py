"""The library's entry points at any tensor-parallel degree.

Inside a rank (under :func:`~mlra.parallel.launch` or ``torchrun``) a shard model is used
exactly like a full one::

    def work(ctx, path, prompts):
        model = load_checkpoint_shard(path, ctx)
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

from mlra.errors import CheckpointError, ConfigError
from mlra.parallel.launch import launch
from mlra.parallel.runtime import TPContext
from mlra.parallel.shard import TensorParallelTransformer, load_shard, shard_model


def load_checkpoint_shard(
    path: str | Path,
    ctx: TPContext,
    variant: str | None = None,
    dtype: torch.dtype | None = None,
    latent_scaling: bool | None = None,
) -> TensorParallelTransformer:
    """This rank's shard of any checkpoint :func:`mlra.load_checkpoint` accepts (eval mode, on
    ``ctx.device``).

    Our model directories and training runs are read slice by slice (``safe_open`` /
    ``get_slice``: no rank ever holds the full model). Official checkpoints are pickled
    ``.bin`` files that cannot be read partially: each rank loads the full model on the CPU,
    keeps its slices and frees the rest before anything moves to the device.
    """
    from mlra.checkpoints import load_checkpoint, resolve_checkpoint_dir
    from mlra.checkpoints.official import full_variant_name, parse_variant, variant_name
    from mlra.io import read_model_config

    kind, directory = resolve_checkpoint_dir(path)
    if kind == "official":
        full = load_checkpoint(directory, variant=variant, device="cpu", dtype=dtype,
                               latent_scaling=latent_scaling)
        model = shard_model(full, ctx, dtype=dtype)
        del full
        return model
    cfg = read_model_config(directory)
    if variant is not None:
        try:
            base = parse_variant(variant).base
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from exc
        if base != variant_name(cfg):
            raise CheckpointError(f"--variant {variant} does not match {directory}: it holds "
                                  f"{full_variant_name(cfg)}")
    if latent_scaling is not None and cfg.attention == "latent" and (
        latent_scaling != cfg.latent_scaling
    ):
        raise CheckpointError(
            f"{directory} records latent_scaling={cfg.latent_scaling}; it cannot be overridden"
        )
    return load_shard(directory, ctx, dtype=dtype)


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
    from mlra.generate import generate

    model = load_checkpoint_shard(path, ctx, **load)
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
