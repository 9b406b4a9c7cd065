"""The MFA family (multi-matrix factorisation attention): a low-rank query path
q = W_qb RMSNorm(W_qa x) (no scale), wide heads, and one shared K head and one shared V head
(MQA-style), full RoPE.

Cache per token: 2 * head_dim. Tensor parallelism splits the query heads; the single K and V
heads and the query down-projection are replicated.
"""

from __future__ import annotations

import torch
from torch import nn

from mlra.attention.base import KVAttention, KVState
from mlra.attention.family import AttentionFamily, AttentionShard, CacheLayout, register
from mlra.attention.standard import head_split, heads_text
from mlra.config import ModelConfig
from mlra.errors import ConfigError
from mlra.layers import RMSNorm, Rotary
from mlra.slicing import rows


class MultiMatrixFactorizationAttention(KVAttention):
    """MFA: low-rank query, one shared K head and one shared V head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
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

    def expand(self, state: KVState) -> tuple[torch.Tensor, torch.Tensor]:
        return state["k"], state["v"]


class MFAFamily(AttentionFamily):
    name = "mfa"
    module = MultiMatrixFactorizationAttention
    required = ("q_lora_rank",)
    official_key = "w_q.weight"
    official_order = 30
    official_renames = {"c_q": "wq_a", "q_layernorm": "q_norm", "w_q": "wq_b", "c_k": "wk",
                        "c_v": "wv"}

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotate-half RoPE over the full head, "
                              f"got {cfg.head_dim}")

    def param_count(self, cfg: ModelConfig) -> int:
        d, H, dh, qr = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.q_lora_rank
        return d * qr + qr + qr * H * dh + 2 * d * dh

    def cache_layout(self, cfg: ModelConfig) -> CacheLayout:
        return CacheLayout((("k", (1, cfg.head_dim)), ("v", (1, cfg.head_dim))))

    def tp_shard(self, cfg: ModelConfig, tp: int, rank: int) -> AttentionShard:
        dh = cfg.head_dim
        h0, Hl, over, slices = head_split(cfg, tp, rank)
        slices["wq_b.weight"] = rows(0, h0 * dh, (h0 + Hl) * dh)
        return AttentionShard(over, slices, heads_text(h0, Hl, cfg.n_heads) + ", shared K/V heads",
                              "query heads split, K/V replicated")

    def official_infer(self, attn, out_in, checker, layout):
        for k in ("c_q.weight", "c_k.weight"):
            if k not in attn:
                raise checker.fail(f"key 'transformer.h.0.attn.{k}' is missing")
        dh = attn["c_k.weight"][0]
        H = checker.exact_div(attn["w_q.weight"][0], dh, "n_head from w_q rows / head_dim")
        checker.check("head_dim", dh)
        checker.check("n_head", H)
        checker.check("share_q_dim", attn["c_q.weight"][0])
        return dict(family=self.name, n_heads=H, head_dim=dh, q_lora_rank=attn["c_q.weight"][0])


register(MFAFamily())
