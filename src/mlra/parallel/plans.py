"""Tensor-parallel sharding plans: what each rank of a TP-``tp`` group holds, per variant.

A plan maps every rank to a :class:`RankShard`: the *local* :class:`~mlra.config.ModelConfig` that
describes the rank's shard (so a shard is an ordinary :class:`~mlra.model.Transformer` and the
cache, decoder and kernels run on it unchanged), and for every sharded parameter of the full
model the index ranges the rank takes (:class:`TensorSlice`). Parameters a plan does not list
are replicated. Partial outputs of attention and MLP are summed by one all-reduce each
(``Block.reduce``); embeddings and the tied head are vocab-parallel.

Rules (TP degree t, rank r): the attention split is each family's own
(:meth:`~mlra.attention.family.AttentionFamily.tp_shard`, in the family's file: e.g. the latent
family splits groups, then branches, then the query heads of a latent head; GQA splits or
replicates its K/V heads); the rest is common to every family:

- MLP (SwiGLU) column- then row-parallel: ``w_gate`` / ``w_up`` rows and ``w_down`` columns,
  split as evenly as possible (the widths need not divide).
- Embedding and tied head vocab-parallel: rank r holds rows ``[r*V_l, (r+1)*V_l)`` of the
  embedding, V_l = ceil(V / t), zero-padded past V. Lookups are masked and all-reduced; logits
  are all-gathered (and trimmed to V) so every rank sees the full distribution.

A degree a variant cannot use raises :class:`~mlra.errors.ConfigError` naming the allowed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from mlra.attention import CacheLayout, family_of
from mlra.config import ModelConfig
from mlra.errors import ConfigError
from mlra.slicing import Ranges, TensorSlice, even_range, rows

__all__ = ["Ranges", "RankShard", "TPPlan", "TensorSlice", "allowed_degrees", "cache_elements",
           "check_degree", "make_plan"]


@dataclass(frozen=True)
class RankShard:
    """What one rank holds: its local config, the slices of the sharded parameters (full-model
    parameter name -> :class:`TensorSlice`; absent names are replicated), its vocabulary range
    and a one-line description."""

    rank: int
    world_size: int
    config: ModelConfig
    slices: dict[str, TensorSlice]
    vocab_start: int
    vocab_stop: int
    description: str

    @property
    def cache_elements_per_token(self) -> int:
        """KV-cache elements this rank stores per token and per layer."""
        return cache_elements(self.config)

    def cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Cache bytes per token over all layers on this rank (bf16 by default)."""
        return self.cache_elements_per_token * self.config.n_layers * bytes_per_element


@dataclass(frozen=True)
class TPPlan:
    """A sharding plan of ``config`` over ``tp`` ranks; ``shards[r]`` is rank r's part."""

    config: ModelConfig
    tp: int
    strategy: str
    shards: tuple[RankShard, ...] = field(repr=False)

    def shard(self, rank: int) -> RankShard:
        """Rank ``rank``'s shard (ConfigError when out of range)."""
        if not 0 <= rank < self.tp:
            raise ConfigError(f"rank {rank} is outside a tensor-parallel group of {self.tp}")
        return self.shards[rank]

    def summary(self) -> str:
        """Multi-line human-readable description of the plan."""
        lines = [f"{self.config.name} at TP {self.tp}: {self.strategy}"]
        for s in self.shards:
            lines.append(
                f"  rank {s.rank}: {s.description}; cache {s.cache_elements_per_token} "
                f"elements/token/layer"
            )
        return "\n".join(lines)


def cache_elements(cfg: ModelConfig) -> int:
    """Elements one token occupies in a layer's KV cache of a model with config ``cfg``."""
    return CacheLayout.from_config(cfg).elements_per_token


def allowed_degrees(cfg: ModelConfig) -> list[int]:
    """Every tensor-parallel degree the plans support for ``cfg``."""
    return family_of(cfg).tp_degrees(cfg)


def check_degree(cfg: ModelConfig, tp: int) -> None:
    """ConfigError naming the allowed degrees when ``cfg`` cannot be split ``tp`` ways."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ConfigError(f"the tensor-parallel degree must be a positive integer, got {tp!r}")
    allowed = allowed_degrees(cfg)
    if tp not in allowed:
        raise ConfigError(
            f"{cfg.name} ({family_of(cfg).describe(cfg)}) cannot be split {tp} ways; allowed "
            f"tensor-parallel degrees: {', '.join(map(str, allowed))}"
        )


# ------------------------------------------------------------------------------- plans
def make_plan(cfg: ModelConfig, tp: int) -> TPPlan:
    """The sharding plan of ``cfg`` at degree ``tp`` (ConfigError if not allowed)."""
    check_degree(cfg, tp)
    shards = []
    strategy = ""
    family = family_of(cfg)
    for rank in range(tp):
        part = family.tp_shard(cfg, tp, rank)
        attn_over, attn_slices, text, strategy = part.overrides, part.slices, part.text, \
            part.strategy
        mlp_over, mlp_slices = _mlp_shard(cfg, tp, rank)
        vocab_over, vocab_slices, v0, v1 = _vocab_shard(cfg, tp, rank)
        slices: dict[str, TensorSlice] = dict(vocab_slices)
        for i in range(cfg.n_layers):
            for name, sl in attn_slices.items():
                slices[f"layers.{i}.attn.{name}"] = sl
            for name, sl in mlp_slices.items():
                slices[f"layers.{i}.mlp.{name}"] = sl
        local = replace(cfg, **attn_over, **mlp_over, **vocab_over)
        _check_local_scales(cfg, local)
        desc = f"{text}; MLP {local.intermediate_size} of {cfg.intermediate_size}; vocab {v0}:{v1}"
        shards.append(RankShard(rank, tp, local, slices, v0, v1, desc))
    return TPPlan(cfg, tp, strategy, tuple(shards))


def _mlp_shard(cfg: ModelConfig, tp: int, rank: int):
    a, b = even_range(cfg.intermediate_size, tp, rank)
    if b <= a:
        raise ConfigError(
            f"intermediate_size {cfg.intermediate_size} is too small to split {tp} ways"
        )
    slices = {"w_gate.weight": rows(0, a, b), "w_up.weight": rows(0, a, b),
              "w_down.weight": rows(1, a, b)}
    return {"intermediate_size": b - a}, slices


def _vocab_shard(cfg: ModelConfig, tp: int, rank: int):
    V = cfg.vocab_size
    per = math.ceil(V / tp)
    start = min(rank * per, V)
    stop = min(start + per, V)
    sl = TensorSlice(((0, ((start, stop),)),), pad=(0, per) if stop - start < per else None)
    return {"vocab_size": per}, {"embed.weight": sl}, start, stop


def _check_local_scales(full: ModelConfig, local: ModelConfig) -> None:
    """Every scale derived from widths must be the full model's (else a shard computes
    something else); a failure here is a bug in a plan, not a user error."""
    assert local.softmax_scale == full.softmax_scale
    assert local.d_model == full.d_model and local.q_lora_rank == full.q_lora_rank
    assert local.latent_head_dim == full.latent_head_dim  # the latent kv_scale sqrt(d / w)
