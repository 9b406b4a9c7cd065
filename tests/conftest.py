"""Shared test helpers: tiny random models with non-zero output projections."""

from __future__ import annotations

import pytest
import torch

import mlra
from mlra import ModelConfig, Transformer


def tiny_config(name: str, **overrides) -> ModelConfig:
    """The tiny preset with non-zero output projections, so attention changes the output."""
    overrides.setdefault("zero_init_output", False)
    return ModelConfig.preset(name, size="tiny", **overrides)


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random model of variant ``name`` in eval mode."""
    torch.manual_seed(seed)
    return Transformer(tiny_config(name, **overrides)).to(dtype).eval()


@pytest.fixture(params=mlra.VARIANTS)
def variant(request) -> str:
    return request.param
