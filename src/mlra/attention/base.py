"""The interface every attention family implements, and the shared scaled-dot-product step.

An attention layer is a few steps, exposed separately so that caches, decoders and
tensor-parallel plans reuse them without copying maths:

- ``query(x, rope)``: the queries of the new tokens;
- ``kv_state(x, rope)``: what a KV cache stores per token (dict of ``[batch, time, ...]``
  tensors; e.g. K and V for GQA, the latent heads and the shared RoPE key for MLA/GLA/MLRA);
- ``attend(q, state, mask)``: attention of the queries over a (cached or fresh) state, in the
  training ("expanded") form;
- ``output(o, x)``: the optional sigmoid gate and the output projection.

The paged decode form adds three more, with defaults that suit families whose cache holds K
and V themselves: ``decode_query(q)`` (the latent family absorbs W_UK here),
``paged_attend(q, pools, layout, block_table, seq_lens)`` (the cache read, through
:mod:`mlra.kernels`) and ``decode_output(z)`` (the latent family applies W_UV and sums its
branches here).

Everything a family knows beyond its module -- config checks, parameter count, cache layout,
tensor-parallel split, decode arithmetic, official-checkpoint names -- lives in its
:class:`~mlra.attention.family.AttentionFamily`, in the same file as the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mlra import kernels
from mlra.attention.family import CacheLayout
from mlra.layers import Rotary

if TYPE_CHECKING:
    from mlra.config import ModelConfig

KVState = dict[str, torch.Tensor]


class Attention(nn.Module):
    """Base class: output projection (and gate) shared by all families."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wo = nn.Linear(cfg.attn_out_dim, cfg.d_model, bias=False)
        self.wg = nn.Linear(cfg.d_model, cfg.attn_out_dim, bias=False) if cfg.output_gate else None
        self.layout: CacheLayout = CacheLayout.from_config(cfg)
        """What a cache of this layer stores per token (its family's layout)."""

    # -- the training-form steps ------------------------------------------------------------
    def query(self, x: torch.Tensor, rope: Rotary) -> Any:
        raise NotImplementedError

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        raise NotImplementedError

    def attend(self, q: Any, state: KVState, mask: torch.Tensor | None) -> torch.Tensor:
        """Head outputs ``[batch, time, attn_out_dim]`` of ``q`` over ``state``; ``mask`` is a
        boolean ``[batch, 1, time, src]`` (True = attend) or None for causal."""
        raise NotImplementedError

    def score_logits(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        """Scaled pre-softmax logits of ``x`` over itself, ``[batch, streams, T, T]`` (streams
        are the independent softmaxes: query heads, times branches for the latent family), no
        mask applied. For analyses (translation equivariance)."""
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

    # -- the paged decode form ------------------------------------------------------------------
    def decode_query(self, q: Any) -> Any:
        """The queries in the form :meth:`paged_attend` takes (default: unchanged)."""
        return q

    def paged_attend(
        self,
        q: Any,
        pools: dict[str, torch.Tensor],
        layout: CacheLayout,
        block_table: torch.Tensor,
        seq_lens: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of the decode-form queries over this layer's paged ``pools`` (the new
        tokens already written). Static shapes, no host synchronisation."""
        raise NotImplementedError

    def decode_output(self, z: torch.Tensor) -> torch.Tensor:
        """From :meth:`paged_attend`'s result to head outputs ``[batch, T, attn_out_dim]``."""
        return z.flatten(2)

    # -- initialisation -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """N(0, std) for every projection; the output projection zero unless configured."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
        if self.cfg.zero_init_output:
            nn.init.zeros_(self.wo.weight)


class KVAttention(Attention):
    """Families that attend over per-head keys and values formed from their state by
    :meth:`expand` (MHA/MQA/GQA, GTA, MFA, TPA). Subclasses define ``query``, ``kv_state``
    and ``expand``; attention, analysis logits and paged decoding follow from them."""

    def expand(self, state: KVState) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, src, kv_heads, head_dim]`` from a cached state."""
        raise NotImplementedError

    def attend(self, q: torch.Tensor, state: KVState, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.expand(state)
        return scaled_dot_product(q, k, v, mask, self.cfg.softmax_scale).flatten(2)

    def score_logits(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        q = self.query(x, rope)  # [B, T, H, D]
        k, _ = self.expand(self.kv_state(x, rope))  # [B, T, Hkv, D]
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        return torch.einsum("bthd,bshd->bhts", q, k) * self.cfg.softmax_scale

    def paged_attend(self, q, pools, layout, block_table, seq_lens):
        """Through :func:`mlra.kernels.paged_gqa_decode`: directly on the K/V pools when the
        cache holds K and V, else on K/V formed from the compact state of the pages in the
        block table only (static shapes: ``batch * pages`` pages, re-indexed by a dense
        table). Returns the head outputs ``[B, T, H, d_v]`` (fp32)."""
        if layout.direct_kv:
            k, v, table = pools["k"], pools["v"], block_table
        else:
            B, W = block_table.shape
            idx = block_table.long()
            paged = {name: pool[idx].flatten(0, 1) for name, pool in pools.items()}
            k, v = self.expand(paged)  # [B * W, page, kv_heads, d]
            table = torch.arange(B * W, dtype=torch.int32, device=idx.device).view(B, W)
        out, _ = kernels.paged_gqa_decode(q, k, v, table, seq_lens, self.cfg.softmax_scale)
        return out


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
