"""Slicing a full model into one rank's shard model.

A shard is a :class:`TensorParallelTransformer`: an ordinary :class:`~mlra.model.Transformer`
built from the rank's local config (its query heads, latent / K/V heads, MLP columns and
vocabulary rows), whose ``Block.reduce`` is an all-reduce over the group and whose
``embed_tokens`` / ``logits`` are vocab-parallel. Caches, decoders and kernels run on it
unchanged, and its cache holds only the rank's heads.

Loading from one of our model directories (:func:`_load_shard`) opens ``model.safetensors`` with
``safetensors.safe_open`` and reads only the rank's slices of each tensor (``get_slice``): no
rank ever holds the full model, and every rank reads the file itself (no broadcast, no
rank-0 bottleneck). :func:`shard_model` slices an in-memory full model instead (tests, or a
caller that already holds the weights).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mlra.config import ModelConfig
from mlra.errors import CheckpointError
from mlra.io import WEIGHTS_FILE, load_state_checked, read_model_config
from mlra.model import Transformer
from mlra.parallel.plans import RankShard, TensorSlice, TPPlan, make_plan
from mlra.parallel.runtime import TPContext, vocab_parallel_embed, vocab_parallel_logits

Reader = Callable[[tuple[slice, ...]], torch.Tensor]


class TensorParallelTransformer(Transformer):
    """One rank's shard of a full model (build it with :func:`_load_shard` /
    :func:`shard_model`).

    ``config`` is the rank's local config except ``vocab_size``, which is the full model's:
    ``logits`` returns the full vocabulary (all-gathered) so every rank samples identically and
    losses are computed as on one device. ``shard.config`` is the exact local config (the
    embedding holds ``shard.config.vocab_size`` rows). ``full_config`` is the full model's.
    """

    def __init__(self, shard: RankShard, full_config: ModelConfig, ctx: TPContext) -> None:
        super().__init__(shard.config)
        self.config = replace(shard.config, vocab_size=full_config.vocab_size)
        self.shard = shard
        self.full_config = full_config
        self.tp = ctx
        for block in self.layers:
            block.reduce = ctx.all_reduce

    @property
    def rank(self) -> int:
        return self.tp.rank

    @property
    def world_size(self) -> int:
        return self.tp.world_size

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup (masked local rows, all-reduced)."""
        return vocab_parallel_embed(self.tp, input_ids, self.embed.weight, self.shard.vocab_start)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits (local rows all-gathered, padding trimmed)."""
        return vocab_parallel_logits(self.tp, hidden, self.embed.weight, self.config.vocab_size)

    def cache_elements_per_token(self) -> int:
        """KV-cache elements this rank stores per token and layer (the plan's number)."""
        return self.shard.cache_elements_per_token


# ------------------------------------------------------------------------------- slicing
def read_slice(read: Reader, full_shape: tuple[int, ...], sl: TensorSlice | None) -> torch.Tensor:
    """Assemble a rank's slice from ``read(index)`` (an index of basic slices into the full
    tensor): one read per block of the range product, concatenated, then zero-padded."""
    base = [slice(None)] * len(full_shape)
    if sl is None:
        return read(tuple(base))
    dims = list(sl.dims)

    def gather(k: int, index: list[slice]) -> torch.Tensor:
        if k == len(dims):
            return read(tuple(index))
        dim, ranges = dims[k]
        parts = []
        for a, b in ranges:
            index[dim] = slice(a, b)
            parts.append(gather(k + 1, index))
        index[dim] = slice(None)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)

    out = gather(0, base)
    if sl.pad is not None:
        dim, size = sl.pad
        missing = size - out.shape[dim]
        if missing > 0:
            shape = list(out.shape)
            shape[dim] = missing
            out = torch.cat([out, out.new_zeros(shape)], dim=dim)
    return out


def shard_state_dict(
    state: Mapping[str, torch.Tensor], shard: RankShard
) -> dict[str, torch.Tensor]:
    """The rank's tensors of a full state dict (contiguous copies of the slices)."""
    out = {}
    for name, tensor in state.items():
        sl = shard.slices.get(name)
        out[name] = read_slice(lambda idx, t=tensor: t[idx], tuple(tensor.shape), sl).contiguous()
        if sl is None:
            out[name] = out[name].clone()
    return out


def _build(
    shard: RankShard,
    full_config: ModelConfig,
    ctx: TPContext,
    state: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype | None,
) -> TensorParallelTransformer:
    with torch.device("meta"):
        model = TensorParallelTransformer(shard, full_config, ctx)
    state = {k: v.to(device=ctx.device, dtype=dtype or v.dtype) for k, v in state.items()}
    load_state_checked(model, state, source=source)
    return model.eval()


def shard_model(
    full: Transformer | Mapping[str, torch.Tensor],
    ctx: TPContext,
    config: ModelConfig | None = None,
    dtype: torch.dtype | None = None,
) -> TensorParallelTransformer:
    """This rank's shard of an in-memory full model (or state dict + ``config``)."""
    if isinstance(full, Transformer):
        config = full.config
        state = full.state_dict()
    else:
        if config is None:
            raise ValueError("shard_model of a state dict needs its ModelConfig")
        state = dict(full)
    plan = make_plan(config, ctx.world_size)
    shard = plan.shard(ctx.rank)
    return _build(shard, config, ctx, shard_state_dict(state, shard), "full model", dtype)


def _load_shard(
    directory: str | Path, ctx: TPContext, dtype: torch.dtype | None = None
) -> TensorParallelTransformer:
    """This rank's shard of a model saved with :func:`mlra.io.save_model`, reading only the
    rank's slices of ``model.safetensors`` (ConfigError when the model cannot be split
    ``ctx.world_size`` ways, CheckpointError when the file is missing or corrupt)."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    config = read_model_config(directory)
    plan: TPPlan = make_plan(config, ctx.world_size)
    shard = plan.shard(ctx.rank)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            for name in f.keys():
                view = f.get_slice(name)
                shape = tuple(view.get_shape())
                state[name] = read_slice(lambda idx, v=view: v[idx], shape, shard.slices.get(name))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is corrupt or truncated: {exc}") from exc
    return _build(shard, config, ctx, state, str(weights), dtype)
