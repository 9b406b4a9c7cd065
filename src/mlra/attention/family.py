"""What an attention family is, beyond its module, and the registry of families.

A family (``standard``, ``gta``, ``mfa``, ``tpa``, ``latent``, or one of your own) is one file
in :mod:`mlra.attention` holding its :class:`~mlra.attention.base.Attention` module and an
:class:`AttentionFamily` that answers every question the rest of the library asks about it:

=========================  =================================================================
question                   asked by
=========================  =================================================================
``validate``, ``required``  :meth:`mlra.config.ModelConfig.validate`
``param_count``             preset parameter matching (``ModelConfig.num_params``)
``softmax_scale``           every attention path
``cache_layout``            :class:`mlra.cache.PagedKVCache` (pools, pack / unpack)
``tp_degrees``/``tp_shard``  :mod:`mlra.parallel.plans` (and through it the KV table)
``decode_flops``            :mod:`mlra.kv_accounting` (arithmetic intensity)
``official_*``              :mod:`mlra.checkpoints.official` (published checkpoints)
=========================  =================================================================

Register a new family with :func:`register` (its ``name`` is the value of
``ModelConfig.family``); nothing else in the library needs to change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mlra.slicing import TensorSlice, divisors

if TYPE_CHECKING:
    from mlra.attention.base import Attention, KVState
    from mlra.config import ModelConfig


@dataclass(frozen=True)
class CacheLayout:
    """What one layer caches per token: pool names and per-token shapes.

    The default :meth:`pack` / :meth:`unpack` store the attention's ``kv_state`` as it is, one
    pool per state tensor; a family whose cache packs its state differently (the latent family
    stores one row per token) subclasses this.
    """

    pools: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.pools)

    @property
    def direct_kv(self) -> bool:
        """True when the pools are K and V themselves (no expansion needed to attend)."""
        return self.names == ("k", "v")

    @property
    def elements_per_token(self) -> int:
        """Cached elements per token per layer."""
        return sum(math.prod(shape) for _, shape in self.pools)

    def pack(self, state: KVState) -> KVState:
        """The attention's state (leading dims ``[...]``) as pool entries ``[..., *shape]``."""
        return {name: state[name] for name in self.names}

    def unpack(self, data: KVState) -> KVState:
        """Inverse of :meth:`pack`."""
        return dict(data)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> CacheLayout:
        """The layout of ``cfg``'s family (the one source of cache sizes)."""
        return family_of(cfg).cache_layout(cfg)


@dataclass(frozen=True)
class RowCacheLayout(CacheLayout):
    """One pool ``rows`` of ``[head 0 | ... | head L-1 | rope key]`` per token: ``heads`` state
    heads of width ``width`` (the attention's ``kv_state[name]``, ``[..., heads, width]``) then
    the shared RoPE key (``kv_state["k_rope"]``). Read by the latent decode kernel, which scores
    each head's columns plus the RoPE key and sums the head's columns as values: the latent
    family's latent heads, GTA's tied K/V heads."""

    name: str = "latent"
    heads: int = 0
    width: int = 0
    rope_dim: int = 0

    @classmethod
    def of(cls, name: str, heads: int, width: int, rope_dim: int) -> RowCacheLayout:
        return cls((("rows", (heads * width + rope_dim,)),), name, heads, width, rope_dim)

    @property
    def latent_offsets(self) -> tuple[int, ...]:
        """Column of each head in a row."""
        return tuple(j * self.width for j in range(self.heads))

    @property
    def rope_offset(self) -> int:
        """Column of the RoPE key in a row."""
        return self.heads * self.width

    def pack(self, state: KVState) -> KVState:
        heads = state[self.name].flatten(-2)
        return {"rows": torch.cat([heads, state["k_rope"].to(heads.dtype)], dim=-1)}

    def unpack(self, data: KVState) -> KVState:
        rows = data["rows"]
        off = self.rope_offset
        return {self.name: rows[..., :off].unflatten(-1, (self.heads, self.width)),
                "k_rope": rows[..., off:]}


@dataclass(frozen=True)
class AttentionShard:
    """One rank's part of an attention layer under tensor parallelism.

    ``overrides``: fields of the rank's local :class:`~mlra.config.ModelConfig`;
    ``slices``: parameter name inside the attention module -> the rank's :class:`TensorSlice`
    (absent names are replicated); ``text``: the rank's part in words; ``strategy``: the rule,
    the same for every rank.
    """

    overrides: dict[str, Any]
    slices: dict[str, TensorSlice]
    text: str
    strategy: str


class AttentionFamily:
    """Everything family-specific outside the module. Subclass, set ``name`` and ``module``,
    implement the methods without defaults, and :func:`register` an instance."""

    name: ClassVar[str]
    module: ClassVar[type[Attention]]
    required: ClassVar[tuple[str, ...]] = ()
    """Config fields this family reads that must be positive integers."""
    rope: ClassVar[str] = "full"
    """How RoPE enters the scores: ``"full"`` (every q/k dim rotated) or ``"partial"``."""
    official_key: ClassVar[str | None] = None
    """A layer-0 attention key whose presence marks this family in a published checkpoint."""
    official_renames: ClassVar[dict[str, str]] = {}
    """Published attention weight names (``.weight`` implied) -> ours, one-to-one."""
    official_order: ClassVar[int] = 100
    """Families are tried in this order when a checkpoint is recognised (a family whose key
    another family's checkpoints also hold comes after it)."""

    # -- configuration --------------------------------------------------------------------
    def validate(self, cfg: ModelConfig) -> None:
        """Raise :class:`~mlra.errors.ConfigError` for settings the family cannot use (the
        ``required`` fields are checked before this)."""

    def softmax_scale(self, cfg: ModelConfig) -> float:
        """Scale of the attention logits (1/sqrt of the q.k width of the training form)."""
        return 1.0 / math.sqrt(cfg.head_dim)

    def param_count(self, cfg: ModelConfig) -> int:
        """Parameters of the attention layer other than the output projection and gate."""
        raise NotImplementedError

    def variant_name(self, cfg: ModelConfig) -> str:
        """The paper's name of the variant ``cfg`` describes (the family name by default)."""
        return self.name

    def describe(self, cfg: ModelConfig) -> str:
        """The shape of the layer in words (error messages)."""
        return f"{cfg.n_heads} query heads of {cfg.head_dim}"

    # -- cache ---------------------------------------------------------------------------
    def cache_layout(self, cfg: ModelConfig) -> CacheLayout:
        """What one layer of a model with config ``cfg`` caches per token."""
        raise NotImplementedError

    def decode_flops(self, cfg: ModelConfig) -> int:
        """FLOPs of attention over one cached token for one new token (q.k and p.v; absorbed
        form for the latent family), for the model (or shard) of config ``cfg``."""
        return 4 * cfg.n_heads * cfg.head_dim

    # -- tensor parallelism ----------------------------------------------------------------
    def tp_degrees(self, cfg: ModelConfig) -> list[int]:
        """Every tensor-parallel degree the family can split ``cfg`` into."""
        return divisors(cfg.n_heads)

    def tp_shard(self, cfg: ModelConfig, tp: int, rank: int) -> AttentionShard:
        """Rank ``rank``'s part at degree ``tp`` (one of :meth:`tp_degrees`)."""
        raise NotImplementedError

    # -- published checkpoints ---------------------------------------------------------------
    def official_infer(
        self, attn: Mapping[str, torch.Size], out_in: int, checker: Any, layout: dict[str, Any]
    ) -> dict[str, Any]:
        """Config fields (``family`` included) from layer 0's attention weight shapes
        ``attn`` (names relative to the layer's ``attn.``); ``out_in`` is the output
        projection's input width. ``checker`` cross-checks config.json (``get``, ``check``,
        ``fail``, ``exact_div``); facts the converter needs go into ``layout``."""
        raise NotImplementedError(f"the {self.name} family has no published checkpoints")

    def official_extra(
        self,
        cfg: ModelConfig,
        layout: dict[str, Any],
        take: Callable[[str, tuple[int, ...]], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Our attention tensors that are not a plain rename (name inside the module ->
        tensor); ``take(official_name, shape)`` reads and checks one published tensor."""
        return {}


_REGISTRY: dict[str, AttentionFamily] = {}


def register(family: AttentionFamily) -> AttentionFamily:
    """Add ``family`` to the registry under ``family.name`` (replacing one of that name)."""
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a registered family (tests that register a toy family clean up with this)."""
    _REGISTRY.pop(name, None)


def families() -> tuple[str, ...]:
    """Names of the registered families, in registration order."""
    return tuple(_REGISTRY)


def get_family(name: str) -> AttentionFamily:
    """The registered family ``name`` (KeyError naming the known ones)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise KeyError(f"no attention family {name!r}; registered: {known}") from None


def family_of(cfg: ModelConfig) -> AttentionFamily:
    """The family of ``cfg``."""
    return get_family(cfg.family)


def build_attention(cfg: ModelConfig) -> Attention:
    """The attention layer of ``cfg``'s family."""
    return family_of(cfg).module(cfg)
