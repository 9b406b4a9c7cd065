"""The standard family: MHA, MQA and GQA (K/V heads = groups of query heads).

Cache per token: K and V of every K/V head (2 * n_kv_heads * head_dim). Under tensor
parallelism the query heads split; the K/V heads split too, or are replicated (rank r uses
K/V head ``r * n_kv // t``) once the degree exceeds them, as serving systems do.
"""

from __future__ import annotations

import torch
from torch import nn

from mlra.attention.base import KVAttention, KVState
from mlra.attention.family import AttentionFamily, AttentionShard, CacheLayout, register
from mlra.config import ModelConfig
from mlra.errors import ConfigError
from mlra.layers import Rotary
from mlra.slicing import TensorSlice, divisors, rows


class GroupedQueryAttention(KVAttention):
    """MHA (n_kv_heads = n_heads), MQA (1) and GQA (between): full-width RoPE on q and k."""

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
        return state["k"], state["v"]


def head_split(
    cfg: ModelConfig, tp: int, rank: int
) -> tuple[int, int, dict, dict[str, TensorSlice]]:
    """(first query head, heads per rank, local overrides, output-side slices) of an even split
    of the query heads: ``wo`` columns and the gate rows follow the rank's heads."""
    dh, Hl = cfg.head_dim, cfg.n_heads // tp
    h0 = rank * Hl
    slices = {"wo.weight": rows(1, h0 * dh, (h0 + Hl) * dh)}
    if cfg.output_gate:
        slices["wg.weight"] = rows(0, h0 * dh, (h0 + Hl) * dh)
    return h0, Hl, {"n_heads": Hl}, slices


def heads_text(h0: int, n: int, total: int) -> str:
    """"query heads a-b of N" / "query head a of N"."""
    return f"query heads {h0}-{h0 + n - 1} of {total}" if n > 1 else f"query head {h0} of {total}"


def kv_head_split(cfg: ModelConfig, tp: int, rank: int) -> tuple[int, int, str, str]:
    """(first K/V head, K/V heads per rank, text, strategy): split, or replicated past their
    count."""
    kv = cfg.n_kv_heads
    if tp <= kv:
        kvl, k0 = kv // tp, rank * (kv // tp)
        strategy = "query and K/V heads split"
    else:
        kvl, k0 = 1, rank * kv // tp
        strategy = f"query heads split, each K/V head replicated on {tp // kv} ranks"
    text = f"K/V heads {k0}-{k0 + kvl - 1} of {kv}" if kvl > 1 else f"K/V head {k0} of {kv}"
    return k0, kvl, text, strategy


def grouped_kv_shard(
    cfg: ModelConfig, tp: int, rank: int, kv_weights: tuple[str, ...], note: str = ""
) -> AttentionShard:
    """Query heads split (``wq`` rows, ``wo`` columns), the K/V heads split or replicated
    (rows of each of ``kv_weights``); ``note`` is added to the strategy."""
    dh = cfg.head_dim
    h0, Hl, over, slices = head_split(cfg, tp, rank)
    k0, kvl, kv_text, strategy = kv_head_split(cfg, tp, rank)
    slices["wq.weight"] = rows(0, h0 * dh, (h0 + Hl) * dh)
    for name in kv_weights:
        slices[name] = rows(0, k0 * dh, (k0 + kvl) * dh)
    text = f"{heads_text(h0, Hl, cfg.n_heads)}, {kv_text}"
    return AttentionShard({**over, "n_kv_heads": kvl}, slices, text, strategy + note)


def kv_head_degrees(cfg: ModelConfig) -> list[int]:
    """Degrees that split the query heads evenly and the K/V heads evenly or by replication."""
    kv = cfg.n_kv_heads
    return [t for t in divisors(cfg.n_heads) if kv % t == 0 or t % kv == 0]


class StandardFamily(AttentionFamily):
    name = "standard"
    module = GroupedQueryAttention
    required = ("n_kv_heads",)
    official_key = "c_k.weight"
    official_order = 50  # MFA checkpoints hold c_k too
    official_renames = {"c_q": "wq", "c_k": "wk", "c_v": "wv"}

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotate-half RoPE over the full head, "
                              f"got {cfg.head_dim}")
        if cfg.n_heads % cfg.n_kv_heads:
            raise ConfigError(f"n_heads ({cfg.n_heads}) must be divisible by n_kv_heads "
                              f"({cfg.n_kv_heads})")

    def param_count(self, cfg: ModelConfig) -> int:
        d, dh = cfg.d_model, cfg.head_dim
        return d * cfg.n_heads * dh + 2 * d * cfg.n_kv_heads * dh

    def variant_name(self, cfg: ModelConfig) -> str:
        if cfg.n_kv_heads == cfg.n_heads:
            return "mha"
        return "mqa" if cfg.n_kv_heads == 1 else "gqa"

    def describe(self, cfg: ModelConfig) -> str:
        return f"{cfg.n_heads} query heads, {cfg.n_kv_heads} K/V heads of {cfg.head_dim}"

    def cache_layout(self, cfg: ModelConfig) -> CacheLayout:
        kv = (cfg.n_kv_heads, cfg.head_dim)
        return CacheLayout((("k", kv), ("v", kv)))

    def tp_degrees(self, cfg: ModelConfig) -> list[int]:
        return kv_head_degrees(cfg)

    def tp_shard(self, cfg: ModelConfig, tp: int, rank: int) -> AttentionShard:
        return grouped_kv_shard(cfg, tp, rank, ("wk.weight", "wv.weight"))

    def official_infer(self, attn, out_in, checker, layout):
        return infer_grouped(attn, out_in, checker, "c_k.weight") | {"family": self.name}


def infer_grouped(attn, out_in: int, checker, kv_key: str) -> dict:
    """n_heads, head_dim, n_kv_heads of a published MHA/MQA/GQA/GTA layer (``n_head`` or
    ``head_dim`` from config.json, since shapes alone cannot split q's rows)."""
    if "c_q.weight" not in attn:
        raise checker.fail("key 'transformer.h.0.attn.c_q.weight' is missing")
    H, dh = checker.heads_and_dim(attn["c_q.weight"][0])
    n_kv = checker.exact_div(attn[kv_key][0], dh, "the number of KV heads")
    group = checker.get("group_size")
    if group is not None and H % group:
        raise checker.fail(f"config.json group_size={group} does not divide n_head={H}")
    if group is not None and H // group != n_kv:
        raise checker.fail(
            f"config.json group_size={group} means {H // group} KV heads, but the K/V weights "
            f"have {n_kv}"
        )
    if out_in != H * dh:
        raise checker.fail(f"attn.c_proj takes {out_in} inputs, expected n_head*head_dim={H * dh}")
    return dict(n_heads=H, head_dim=dh, n_kv_heads=n_kv)


register(StandardFamily())
