"""The GTA family (grouped-tied attention): per K/V head a tied state t (head_dim - rope_dim)
that is both the NoPE key and the first part of the value, a value-only part u (rope_dim), and
one shared RoPE key: K_h = [t_g, k_rope], V_h = [t_g, u_g].

Cache per token: n_kv_heads * head_dim + rope_dim, one row ``[kv head 0 | ... | k_rope]``.
Decoding reads it directly: a K/V head is a latent head of width head_dim whose query is
[q_nope ; 0] (the value-only part takes no part in the score) with the shared RoPE key, so the
latent family's kernel serves GTA, one call per K/V head. Tensor parallelism as GQA, with the
shared RoPE key on every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from mlra import kernels
from mlra.attention.base import KVAttention, KVState
from mlra.attention.family import (
    AttentionFamily,
    AttentionShard,
    CacheLayout,
    RowCacheLayout,
    register,
)
from mlra.attention.standard import grouped_kv_shard, infer_grouped, kv_head_degrees
from mlra.config import ModelConfig
from mlra.errors import ConfigError
from mlra.layers import Rotary


class GroupedTiedAttention(KVAttention):
    """GTA: tied K-NoPE/V state per K/V head plus a shared rotated key."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, dh = cfg.d_model, cfg.head_dim
        self.wq = nn.Linear(d, cfg.attn_out_dim, bias=False)  # every query head
        self.w_kv = nn.Linear(d, cfg.n_kv_heads * dh, bias=False)  # tied state per K/V head
        self.w_rope_k = nn.Linear(d, cfg.rope_dim, bias=False)  # the shared RoPE key

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

    # -- decode form: the compact rows through the latent kernel ----------------------------
    def decode_query(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([q_nope ; 0] [B, T, kv heads, Hg, head_dim], q_rope [B, T, kv heads, Hg, rope])."""
        B, T, H, dh = q.shape
        r, Hkv = self.cfg.rope_dim, self.cfg.n_kv_heads
        q_lat = torch.nn.functional.pad(q[..., : dh - r], (0, r))
        return q_lat.view(B, T, Hkv, H // Hkv, dh), q[..., dh - r:].reshape(B, T, Hkv, -1, r)

    def paged_attend(self, q, pools, layout, block_table, seq_lens):
        """One latent-kernel call per K/V head over its columns of the rows and the RoPE key;
        returns the head outputs [B, T, kv heads, Hg, head_dim] (fp32)."""
        q_lat, q_rope = q
        outs = []
        for g, offset in enumerate(layout.latent_offsets):
            z, _ = kernels.paged_latent_decode(
                q_lat[:, :, g, None].contiguous(), q_rope[:, :, g].contiguous(), pools["rows"],
                block_table, seq_lens, [offset], layout.rope_offset, self.cfg.softmax_scale,
            )  # [B, T, 1, Hg, head_dim]
            outs.append(z[:, :, 0])
        return torch.stack(outs, dim=2)


class GTAFamily(AttentionFamily):
    name = "gta"
    module = GroupedTiedAttention
    required = ("n_kv_heads", "rope_dim")
    rope = "partial"
    official_key = "kv_proj.weight"
    official_order = 40
    official_renames = {"c_q": "wq", "kv_proj": "w_kv", "W_rope_k": "w_rope_k"}

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.n_heads % cfg.n_kv_heads:
            raise ConfigError(f"n_heads ({cfg.n_heads}) must be divisible by n_kv_heads "
                              f"({cfg.n_kv_heads})")
        if cfg.rope_dim % 2:
            raise ConfigError(f"rope_dim must be even for rotate-half RoPE, got {cfg.rope_dim}")
        if cfg.rope_dim >= cfg.head_dim:
            raise ConfigError(
                f"rope_dim ({cfg.rope_dim}) must be smaller than head_dim ({cfg.head_dim}) for "
                "GTA: the first head_dim - rope_dim dims of each KV head are the tied K/V state"
            )

    def param_count(self, cfg: ModelConfig) -> int:
        d, dh = cfg.d_model, cfg.head_dim
        return d * cfg.n_heads * dh + d * cfg.n_kv_heads * dh + d * cfg.rope_dim

    def describe(self, cfg: ModelConfig) -> str:
        return f"{cfg.n_heads} query heads, {cfg.n_kv_heads} K/V heads of {cfg.head_dim}"

    def cache_layout(self, cfg: ModelConfig) -> CacheLayout:
        return RowCacheLayout.of("kv", cfg.n_kv_heads, cfg.head_dim, cfg.rope_dim)

    def tp_degrees(self, cfg: ModelConfig) -> list[int]:
        return kv_head_degrees(cfg)

    def tp_shard(self, cfg: ModelConfig, tp: int, rank: int) -> AttentionShard:
        return grouped_kv_shard(cfg, tp, rank, ("w_kv.weight",),
                                ", shared RoPE key on every rank")

    def official_infer(self, attn, out_in, checker, layout):
        fields = infer_grouped(attn, out_in, checker, "kv_proj.weight")
        if "W_rope_k.weight" not in attn:
            raise checker.fail("key 'transformer.h.0.attn.W_rope_k.weight' is missing")
        return fields | {"family": self.name, "rope_dim": attn["W_rope_k.weight"][0]}


register(GTAFamily())
