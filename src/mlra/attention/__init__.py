"""Attention families and the registry that maps a config to its attention class."""

from __future__ import annotations

from mlra.attention.base import Attention, KVState, scaled_dot_product
from mlra.attention.factorized import MultiMatrixFactorizationAttention, TensorProductAttention
from mlra.attention.latent import LatentAttention
from mlra.attention.standard import GroupedQueryAttention, GroupedTiedAttention
from mlra.config import ModelConfig

ATTENTION_FAMILIES: dict[str, type[Attention]] = {
    "standard": GroupedQueryAttention,
    "gta": GroupedTiedAttention,
    "mfa": MultiMatrixFactorizationAttention,
    "tpa": TensorProductAttention,
    "latent": LatentAttention,
}


def build_attention(cfg: ModelConfig) -> Attention:
    """The attention layer of ``cfg``'s family."""
    return ATTENTION_FAMILIES[cfg.attention](cfg)


__all__ = [
    "ATTENTION_FAMILIES", "Attention", "GroupedQueryAttention", "GroupedTiedAttention",
    "KVState", "LatentAttention", "MultiMatrixFactorizationAttention", "TensorProductAttention",
    "build_attention", "scaled_dot_product",
]
