"""The latent family: MLA, GLA-G and MLRA-B as one layer with a (branches x groups) grid.

The KV latent (width d_c) is split into ``branches * groups`` latent heads of width
w = d_c / (branches * groups); latent head j = b * groups + g has its own RMSNorm and scale
sqrt(d / w). Query heads are split into ``groups`` contiguous groups. Query head h of group g
attends, once per branch b, to latent head (b, g) with key [k_nope(b, g, h) ; k_rope] and value
v(b, g, h); branch outputs are summed and scaled by 1/sqrt(branches).

    MLA = (1, 1), GLA-2 = (1, 2), GLA-4 = (1, 4), MLRA-2 = (2, 2), MLRA-4 = (4, 1).

The up-projection is stored as one tensor ``wkv_b`` of shape (latent heads, w, heads_per_group *
2 * head_dim) -- the official (block, in, out) layout -- whose last dimension is head-major with
[k_nope | v] per head. Cache per token: the latent heads (d_c) plus the shared RoPE key.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlra.attention.base import Attention, KVState
from mlra.config import ModelConfig
from mlra.kernels import latent_train_attention, train_kernel_supports
from mlra.layers import RMSNorm, Rotary, rms_norm

LatentQuery = tuple[torch.Tensor, torch.Tensor]
"""(q_nope [batch, time, heads, head_dim], q_rope [batch, time, heads, rope_dim])."""


class LatentAttention(Attention):
    """MLA / GLA / MLRA: a grid of latent heads with a shared decoupled RoPE key."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d, H, dh, dr = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.rope_dim
        self.branches, self.groups = cfg.latent_branches, cfg.latent_groups
        self.n_latent, self.width = cfg.n_latent_heads, cfg.latent_head_dim
        self.heads_per_group = H // self.groups
        self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.wq_b = nn.Linear(cfg.q_lora_rank, H * (dh + dr), bias=False)
        self.wkv_a = nn.Linear(d, cfg.kv_lora_rank + dr, bias=False)
        self.kv_norm = nn.Parameter(torch.ones(self.n_latent, self.width))
        self.wkv_b = nn.Parameter(
            torch.empty(self.n_latent, self.width, self.heads_per_group * 2 * dh)
        )
        scaled = cfg.latent_scaling
        self.q_scale = math.sqrt(d / cfg.q_lora_rank) if scaled else 1.0
        self.kv_scale = math.sqrt(d / self.width) if scaled else 1.0
        self.out_scale = 1.0 / math.sqrt(self.branches) if scaled else 1.0
        if cfg.output_scale is not None:
            self.out_scale = cfg.output_scale

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.wkv_b, std=self.cfg.init_std)
        nn.init.ones_(self.kv_norm)

    # -- projections -----------------------------------------------------------------------
    def query(self, x: torch.Tensor, rope: Rotary) -> LatentQuery:
        B, T, _ = x.shape
        dh = self.cfg.head_dim
        c_q = self.q_norm(self.wq_a(x)) * self.q_scale
        q = self.wq_b(c_q).view(B, T, self.cfg.n_heads, dh + self.cfg.rope_dim)
        return q[..., :dh], rope.rotate(q[..., dh:])

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        """``latent`` [batch, time, latent heads, w] (normed, scaled) and ``k_rope`` [.., rope]."""
        B, T, _ = x.shape
        c = self.wkv_a(x)
        dc = self.cfg.kv_lora_rank
        latent = c[..., :dc].reshape(B, T, self.n_latent, self.width)
        latent = rms_norm(latent, self.kv_norm, self.cfg.norm_eps) * self.kv_scale
        return {"latent": latent, "k_rope": rope.rotate(c[..., dc:])}

    def up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK and W_UV, each [branches, groups, w, heads_per_group, head_dim]: latent head
        (b, g) maps to the NoPE key / value of head i of group g as ``latent @ W[b, g, :, i]``."""
        dh = self.cfg.head_dim
        w = self.wkv_b.view(self.branches, self.groups, self.width, self.heads_per_group, 2 * dh)
        return w[..., :dh], w[..., dh:]

    # -- training form ---------------------------------------------------------------------
    def attend(self, q: LatentQuery, state: KVState, mask: torch.Tensor | None) -> torch.Tensor:
        """Expanded form: materialise per-branch K/V and run all branches in one SDPA call
        (branches stacked on the batch axis)."""
        q_nope, q_rope = q
        latent, k_rope = state["latent"], state["k_rope"]
        B, T, H, dh = q_nope.shape
        S, nb, dr = latent.shape[1], self.branches, self.cfg.rope_dim
        kv = torch.einsum("bslw,lwo->bslo", latent, self.wkv_b.to(latent.dtype))
        kv = kv.reshape(B, S, nb, H, 2 * dh)  # latent j = b*groups + g; head = g*Hg + i
        if mask is None and train_kernel_supports(q_nope, q_rope, kv, k_rope):
            o = latent_train_attention(q_nope, q_rope, kv, k_rope, self.cfg.softmax_scale,
                                       self.out_scale)  # the fused kernel (CUDA, causal)
            return o.reshape(B, T, H * dh)
        k = torch.cat([kv[..., :dh], k_rope[:, :, None, None, :].expand(B, S, nb, H, dr)], -1)
        v = kv[..., dh:]
        qf = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)  # [B, H, T, dh + dr]
        qf = qf[:, None].expand(B, nb, H, T, dh + dr).reshape(B * nb, H, T, dh + dr)
        k = k.permute(0, 2, 3, 1, 4).reshape(B * nb, H, S, dh + dr)
        v = v.permute(0, 2, 3, 1, 4).reshape(B * nb, H, S, dh)
        if mask is not None:
            mask = mask[:, None].expand(B, nb, *mask.shape[1:]).reshape(B * nb, *mask.shape[1:])
        # Zero-pad V to the q/k width: the fused SDPA kernels (flash on CPU and GPU) need equal
        # widths, and the generic fallback is several times slower. The pad columns stay zero.
        v = torch.nn.functional.pad(v, (0, dr))
        o = torch.nn.functional.scaled_dot_product_attention(
            qf, k, v, attn_mask=mask, is_causal=mask is None, scale=self.cfg.softmax_scale
        )
        o = o[..., :dh].reshape(B, nb, H, T, dh).sum(dim=1) * self.out_scale
        return o.transpose(1, 2).reshape(B, T, H * dh)

    # -- absorbed form ---------------------------------------------------------------------
    def absorb_query(self, q: LatentQuery) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries in latent space: ``q_abs`` [batch, time, branches, groups, Hg, w] and the
        RoPE query [batch, time, groups, Hg, rope]. No per-head K or V is formed."""
        q_nope, q_rope = q
        B, T, _, dh = q_nope.shape
        G, Hg = self.groups, self.heads_per_group
        w_uk, _ = self.up_weights()
        q_abs = torch.einsum(
            "btgid,cgwid->btcgiw", q_nope.reshape(B, T, G, Hg, dh), w_uk.to(q_nope.dtype)
        )
        return q_abs, q_rope.reshape(B, T, G, Hg, -1)

    def attend_absorbed(
        self, q: LatentQuery, state: KVState, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Weight-absorbed attention (the decode form), a pure-PyTorch reference.

        Per latent head (b, g): MQA of the absorbed queries over [k_rope ; latent(b, g)] with
        value latent(b, g), then W_UV per head, sum over branches times 1/sqrt(branches).
        """
        latent, k_rope = state["latent"], state["k_rope"]
        B, S = latent.shape[:2]
        q_abs, q_rope = self.absorb_query(q)
        T = q_abs.shape[1]
        f = torch.promote_types(q_abs.dtype, torch.float32)  # fp32 math (fp64 stays fp64)
        lat = latent.reshape(B, S, self.branches, self.groups, self.width).to(f)
        logits = torch.einsum("btcgiw,bscgw->bcgits", q_abs.to(f), lat)
        logits = logits + torch.einsum("btgir,bsr->bgits", q_rope.to(f), k_rope.to(f))[:, None]
        logits = logits * self.cfg.softmax_scale
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=latent.device).tril(S - T)
            mask = mask[None, None]
        logits = logits.masked_fill(~mask[:, :, None, None], float("-inf"))
        p = torch.softmax(logits, dim=-1)
        z = torch.einsum("bcgits,bscgw->btcgiw", p, lat)
        _, w_uv = self.up_weights()
        o = torch.einsum("btcgiw,cgwid->btgid", z, w_uv.to(f)) * self.out_scale
        return o.reshape(B, T, self.cfg.attn_out_dim).to(q_abs.dtype)
