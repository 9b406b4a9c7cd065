"""The interface every attention family implements, and the shared scaled-dot-product step.

An attention layer is four steps, exposed separately so that caches, decoders and tensor-parallel
plans can reuse them without copying maths:

- ``query(x, rope)``: the queries of the new tokens;
- ``kv_state(x, rope)``: what a KV cache stores per token (dict of ``[batch, time, ...]``
  tensors; e.g. K and V for GQA, the latent heads and the shared RoPE key for MLA/GLA/MLRA);
- ``attend(q, state, mask)``: attention of the queries over a (cached or fresh) state;
- ``output(o, x)``: the optional sigmoid gate and the output projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlra.config import ModelConfig
from mlra.layers import Rotary

KVState = dict[str, torch.Tensor]


class Attention(nn.Module):
    """Base class: output projection (and gate) shared by all families."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wo = nn.Linear(cfg.attn_out_dim, cfg.d_model, bias=False)
        self.wg = nn.Linear(cfg.d_model, cfg.attn_out_dim, bias=False) if cfg.output_gate else None

    # -- the four steps -------------------------------------------------------------------
    def query(self, x: torch.Tensor, rope: Rotary) -> Any:
        raise NotImplementedError

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        raise NotImplementedError

    def attend(self, q: Any, state: KVState, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gate (``o * sigmoid(x W_g)`` when enabled) then the output projection."""
        if self.wg is not None:
            o = o * torch.sigmoid(self.wg(x))
        return self.wo(o)

    def forward(
        self, x: torch.Tensor, rope: Rotary, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full (training-form) attention of ``x`` over itself; ``mask`` None means causal."""
        return self.output(self.attend(self.query(x, rope), self.kv_state(x, rope), mask), x)

    # -- initialisation -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """N(0, std) for every projection; the output projection zero unless configured."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
        if self.cfg.zero_init_output:
            nn.init.zeros_(self.wo.weight)


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Attention through ``F.scaled_dot_product_attention``.

    q: [batch, time, heads, dq]; k: [batch, src, kv_heads, dq]; v: [batch, src, kv_heads, dv]
    with heads divisible by kv_heads (query head h reads KV head h // (heads/kv_heads)).
    ``mask``: boolean [batch, 1, time, src] (True = attend) or None for causal (time == src).
    Returns [batch, time, heads, dv].
    """
    gqa = k.shape[2] != q.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if mask is None:
        out = F.scaled_dot_product_attention(
            qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa
        )
    else:
        out = F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa
        )
    return out.transpose(1, 2)
