"""Attention families, one file each, and their registry.

Every family file holds its module and its :class:`AttentionFamily` (config checks, parameter
count, cache layout, tensor-parallel split, decode arithmetic, published-checkpoint names) and
registers the family on import; see :mod:`mlra.attention.family` for the contract.
"""

from __future__ import annotations

from mlra.attention.base import Attention, KVAttention, KVState, scaled_dot_product
from mlra.attention.family import (
    AttentionFamily,
    AttentionShard,
    CacheLayout,
    RowCacheLayout,
    build_attention,
    families,
    family_of,
    get_family,
    register,
    unregister,
)
from mlra.attention.gta import GroupedTiedAttention
from mlra.attention.latent import LatentAttention, LatentCacheLayout, LatentFamily
from mlra.attention.mfa import MultiMatrixFactorizationAttention
from mlra.attention.standard import GroupedQueryAttention
from mlra.attention.tpa import TensorProductAttention

__all__ = [
    "Attention", "AttentionFamily", "AttentionShard", "CacheLayout", "GroupedQueryAttention",
    "GroupedTiedAttention", "KVAttention", "KVState", "LatentAttention", "LatentCacheLayout",
    "LatentFamily", "MultiMatrixFactorizationAttention", "RowCacheLayout", "TensorProductAttention",
    "build_attention", "families", "family_of", "get_family", "register", "scaled_dot_product",
    "unregister",
]
