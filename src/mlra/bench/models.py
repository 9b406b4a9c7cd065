"""Benchmark models: any preset with random weights, built directly on the device."""

from __future__ import annotations

import torch

from mlra.config import ModelConfig
from mlra.model import Transformer


def random_model(
    cfg: ModelConfig, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> Transformer:
    """``Transformer(cfg)`` in eval mode with weights drawn in ``dtype`` on ``device`` from
    ``seed`` (the same weights on every process that asks for the same device type)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()
