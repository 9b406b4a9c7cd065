"""The standard family: MHA, MQA, GQA (K/V heads = groups) and GTA (grouped-tied attention)."""

from __future__ import annotations

import torch
from torch import nn

from mlra.attention.base import Attention, KVState, scaled_dot_product
from mlra.config import ModelConfig
from mlra.layers import Rotary


class GroupedQueryAttention(Attention):
    """MHA (n_kv_heads = n_heads), MQA (1) and GQA (between): full-width RoPE on q and k.

    Cache per token: K and V of every KV head (2 * n_kv_heads * head_dim).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, H * dh, bias=False)
        self.wk = nn.Linear(cfg.d_model, Hkv * dh, bias=False)
        self.wv = nn.Linear(cfg.d_model, Hkv * dh, bias=False)

    def query(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        B, T, _ = x.shape
        return rope.rotate(self.wq(x).view(B, T, self.cfg.n_heads, self.cfg.head_dim))

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        B, T, _ = x.shape
        shape = (B, T, self.cfg.n_kv_heads, self.cfg.head_dim)
        return {"k": rope.rotate(self.wk(x).view(shape)), "v": self.wv(x).view(shape)}

    def expand(self, state: KVState) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [batch, src, kv_heads, head_dim] from a cached state."""
        return state["k"], state["v"]

    def attend(self, q: torch.Tensor, state: KVState, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.expand(state)
        o = scaled_dot_product(q, k, v, mask, self.cfg.softmax_scale)
        return o.flatten(2)


class GroupedTiedAttention(GroupedQueryAttention):
    """GTA: per KV head a tied state t (head_dim - rope_dim) that is both the NoPE key and the
    first part of the value, a value-only part u (rope_dim), and one shared RoPE key.

    K_h = [t_g, k_rope], V_h = [t_g, u_g]. Cache per token: n_kv_heads * head_dim + rope_dim.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        Attention.__init__(self, cfg)
        H, Hkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, H * dh, bias=False)
        self.w_kv = nn.Linear(cfg.d_model, Hkv * dh, bias=False)
        self.w_rope_k = nn.Linear(cfg.d_model, cfg.rope_dim, bias=False)

    def query(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.cfg.n_heads, self.cfg.head_dim)
        nope = self.cfg.head_dim - self.cfg.rope_dim
        return torch.cat([q[..., :nope], rope.rotate(q[..., nope:])], dim=-1)

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        B, T, _ = x.shape
        kv = self.w_kv(x).view(B, T, self.cfg.n_kv_heads, self.cfg.head_dim)
        return {"kv": kv, "k_rope": rope.rotate(self.w_rope_k(x))}

    def expand(self, state: KVState) -> tuple[torch.Tensor, torch.Tensor]:
        kv, k_rope = state["kv"], state["k_rope"]
        nope = self.cfg.head_dim - self.cfg.rope_dim
        k_rope = k_rope[:, :, None, :].expand(*kv.shape[:3], self.cfg.rope_dim)
        return torch.cat([kv[..., :nope], k_rope], dim=-1), kv
