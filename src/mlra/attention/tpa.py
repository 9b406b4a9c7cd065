"""The TPA family (tensor-product attention): q, k, v are per-token sums of rank-one
products, e.g. q_h = (1/R_q) sum_r A_q[h, r] B_q[r]; RoPE rotates the rows of B_q and B_k.

Cache per token: the K/V factors, 2 * rank * (n_heads + head_dim). Decoding reads them
directly (no per-head K or V is formed; :func:`mlra.kernels.paged_tpa_decode`): the score of
head h with token s is (1/R) sum_r A_k[s, h, r] (q_h . B_k[s, r]) and its output
(1/R) sum_s sum_r p[h, s] A_v[s, h, r] B_v[s, r]. Tensor parallelism splits the query heads (the
A factors of q, k and v); the B factors are replicated.

Einsum axes: b batch, t query positions, s cached positions, h heads, r rank, d head width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlra import kernels
from mlra.attention.base import KVAttention, KVState
from mlra.attention.family import AttentionFamily, AttentionShard, CacheLayout, register
from mlra.attention.standard import head_split, heads_text
from mlra.config import ModelConfig
from mlra.errors import ConfigError
from mlra.layers import Rotary
from mlra.slicing import rows


class TensorProductAttention(KVAttention):
    """TPA: rank-R factorised q, k, v (rank R_q for q)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
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

    def paged_attend(self, q, pools, layout, block_table, seq_lens):
        """Attention straight from the cached factors through :func:`mlra.kernels.paged_tpa_decode`
        (K = (1/R) sum_r A_k B_k, V = (1/R) sum_r A_v B_v never formed). Returns
        [B, T, H, head_dim] (fp32)."""
        R = self.cfg.tpa_rank
        out, _ = kernels.paged_tpa_decode(
            q, pools["a_k"], pools["b_k"], pools["a_v"], pools["b_v"], block_table, seq_lens,
            self.cfg.softmax_scale / R, 1.0 / R)
        return out

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


class TPAFamily(AttentionFamily):
    name = "tpa"
    module = TensorProductAttention
    required = ("tpa_rank", "tpa_q_rank")
    official_key = "c_qkv.W_A_q.weight"
    official_order = 20
    official_renames = {
        "c_qkv.W_A_q": "w_aq", "c_qkv.W_A_k": "w_ak", "c_qkv.W_A_v": "w_av",
        "c_qkv.W_B_q": "w_bq", "c_qkv.W_B_k": "w_bk", "c_qkv.W_B_v": "w_bv",
    }

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotate-half RoPE over the full head, "
                              f"got {cfg.head_dim}")

    def param_count(self, cfg: ModelConfig) -> int:
        d, H, dh, R, Rq = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.tpa_rank, cfg.tpa_q_rank
        return d * (H * Rq + 2 * H * R + Rq * dh + 2 * R * dh)

    def cache_layout(self, cfg: ModelConfig) -> CacheLayout:
        H, R, dh = cfg.n_heads, cfg.tpa_rank, cfg.head_dim
        return CacheLayout((("a_k", (H, R)), ("b_k", (R, dh)), ("a_v", (H, R)), ("b_v", (R, dh))))

    def decode_flops(self, cfg: ModelConfig) -> int:
        return cfg.n_heads * (4 * cfg.tpa_rank * cfg.head_dim + 4 * cfg.tpa_rank)

    def tp_shard(self, cfg: ModelConfig, tp: int, rank: int) -> AttentionShard:
        R, Rq = cfg.tpa_rank, cfg.tpa_q_rank
        h0, Hl, over, slices = head_split(cfg, tp, rank)
        slices["w_aq.weight"] = rows(0, h0 * Rq, (h0 + Hl) * Rq)
        slices["w_ak.weight"] = rows(0, h0 * R, (h0 + Hl) * R)
        slices["w_av.weight"] = rows(0, h0 * R, (h0 + Hl) * R)
        return AttentionShard(over, slices, heads_text(h0, Hl, cfg.n_heads) + ", all B factors",
                              "query heads split (A factors), B factors replicated")

    def official_infer(self, attn, out_in, checker, layout):
        names = ("W_A_q", "W_B_q", "W_A_k", "W_B_k")
        for n in names:
            if f"c_qkv.{n}.weight" not in attn:
                raise checker.fail(f"key 'transformer.h.0.attn.c_qkv.{n}.weight' is missing")
        aq, bq, ak, bk = (attn[f"c_qkv.{n}.weight"][0] for n in names)
        H = checker.get("n_head")
        if H is None:  # aq*bq/out_in = (H Rq)(Rq dh)/(H dh) = Rq^2
            Rq = math.isqrt(aq * bq // out_in)
            H = checker.exact_div(aq, max(Rq, 1), "n_head from W_A_q rows / q_rank")
        Rq = checker.exact_div(aq, H, "q_rank from W_A_q rows / n_head")
        R = checker.exact_div(ak, H, "rank from W_A_k rows / n_head")
        dh = checker.exact_div(out_in, H, "head_dim from c_proj inputs / n_head")
        if bq != Rq * dh or bk != R * dh:
            raise checker.fail(
                f"TPA factor shapes disagree: W_B_q {bq} rows, W_B_k {bk} rows for q_rank={Rq}, "
                f"rank={R}, head_dim={dh}"
            )
        checker.check("head_dim", dh)
        checker.check("rank", R)
        checker.check("q_rank", Rq)
        return dict(family=self.name, n_heads=H, head_dim=dh, tpa_rank=R, tpa_q_rank=Rq)


register(TPAFamily())
