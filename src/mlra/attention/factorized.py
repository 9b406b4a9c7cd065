"""Factorised families: MFA (multi-matrix factorisation) and TPA (tensor-product attention)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlra.attention.base import Attention, KVState
from mlra.attention.standard import GroupedQueryAttention
from mlra.config import ModelConfig
from mlra.layers import RMSNorm, Rotary


class MultiMatrixFactorizationAttention(GroupedQueryAttention):
    """MFA: low-rank query path q = W_qb RMSNorm(W_qa x) (no scale), wide heads, and one shared
    K head and one shared V head (MQA-style). Full RoPE. Cache per token: 2 * head_dim."""

    def __init__(self, cfg: ModelConfig) -> None:
        Attention.__init__(self, cfg)
        H, dh, qr = cfg.n_heads, cfg.head_dim, cfg.q_lora_rank
        self.wq_a = nn.Linear(cfg.d_model, qr, bias=False)
        self.q_norm = RMSNorm(qr, cfg.norm_eps)
        self.wq_b = nn.Linear(qr, H * dh, bias=False)
        self.wk = nn.Linear(cfg.d_model, dh, bias=False)
        self.wv = nn.Linear(cfg.d_model, dh, bias=False)

    def query(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x)))
        return rope.rotate(q.view(B, T, self.cfg.n_heads, self.cfg.head_dim))

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        B, T, _ = x.shape
        shape = (B, T, 1, self.cfg.head_dim)
        return {"k": rope.rotate(self.wk(x).view(shape)), "v": self.wv(x).view(shape)}


class TensorProductAttention(GroupedQueryAttention):
    """TPA: q, k, v are per-token sums of rank-one products, e.g.
    q_h = (1/R_q) sum_r A_q[h, r] B_q[r]; RoPE rotates the rows of B_q and B_k.

    Cache per token: the K/V factors, 2 * rank * (n_heads + head_dim).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        Attention.__init__(self, cfg)
        d, H, dh, R, Rq = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.tpa_rank, cfg.tpa_q_rank
        self.w_aq = nn.Linear(d, H * Rq, bias=False)
        self.w_ak = nn.Linear(d, H * R, bias=False)
        self.w_av = nn.Linear(d, H * R, bias=False)
        self.w_bq = nn.Linear(d, Rq * dh, bias=False)
        self.w_bk = nn.Linear(d, R * dh, bias=False)
        self.w_bv = nn.Linear(d, R * dh, bias=False)

    def _factors(self, x: torch.Tensor, wa: nn.Linear, wb: nn.Linear, rank: int):
        B, T, _ = x.shape
        a = wa(x).view(B, T, self.cfg.n_heads, rank)
        b = wb(x).view(B, T, rank, self.cfg.head_dim)
        return a, b

    def query(self, x: torch.Tensor, rope: Rotary) -> torch.Tensor:
        Rq = self.cfg.tpa_q_rank
        a, b = self._factors(x, self.w_aq, self.w_bq, Rq)
        return torch.einsum("bthr,btrd->bthd", a, rope.rotate(b)) / Rq

    def kv_state(self, x: torch.Tensor, rope: Rotary) -> KVState:
        R = self.cfg.tpa_rank
        a_k, b_k = self._factors(x, self.w_ak, self.w_bk, R)
        a_v, b_v = self._factors(x, self.w_av, self.w_bv, R)
        return {"a_k": a_k, "b_k": rope.rotate(b_k), "a_v": a_v, "b_v": b_v}

    def expand(self, state: KVState) -> tuple[torch.Tensor, torch.Tensor]:
        R = self.cfg.tpa_rank
        k = torch.einsum("bshr,bsrd->bshd", state["a_k"], state["b_k"]) / R
        v = torch.einsum("bshr,bsrd->bshd", state["a_v"], state["b_v"]) / R
        return k, v

    def reset_parameters(self) -> None:
        """Xavier-uniform factors as the official code (fan computed on the 3-D view
        (in_features, heads or rank, rank or head_dim)); output projection as configured."""
        for w in (self.w_aq, self.w_ak, self.w_av, self.w_bq, self.w_bk, self.w_bv):
            out_features, in_features = w.weight.shape
            last = (
                self.cfg.head_dim
                if w in (self.w_bq, self.w_bk, self.w_bv)
                else out_features // self.cfg.n_heads
            )
            bound = math.sqrt(6.0 / (out_features + in_features * last))
            nn.init.uniform_(w.weight, -bound, bound)
        for w in (self.wo, self.wg):
            if w is not None:
                nn.init.normal_(w.weight, std=self.cfg.init_std)
        if self.cfg.zero_init_output:
            nn.init.zeros_(self.wo.weight)
