"""KV-cache accounting: elements per token per layer, in total and per device under tensor
parallelism, and the arithmetic intensity of decoding (mlra-paper.md section 2).

Sharding rules (per device, TP degree t):

- MHA/MQA/GQA: K/V heads split, replicated once t exceeds them: 2 * ceil(kv/t) * head_dim.
- GTA: tied K/V heads split as GQA (head_dim each), the shared RoPE key on every device.
- MFA: its single K and V head replicated on every device.
- TPA: A factors (2 * rank per query head) split with the heads, B factors (2 * rank *
  head_dim) replicated.
- MLA/GLA/MLRA: the latent heads split across devices (ceil(L/t) per device, one latent once t
  exceeds them, heads then split within a latent), the RoPE key on every device. MLA has one
  latent head, hence no reduction at any degree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from mlra.config import VARIANTS, ModelConfig

TP_DEGREES = (1, 2, 4, 8)


def decode_config(name: str) -> ModelConfig:
    """The paper's decoding configuration of a variant: 64 query heads of 128, latent 512,
    RoPE 64, GQA/GTA with 8 KV heads, MFA with one K/V head of 256, TPA rank 2."""
    base = ModelConfig.preset(name, size="paper")
    changes: dict = dict(d_model=8192, n_heads=64, q_lora_rank=1536)
    if name == "mha":
        changes["n_kv_heads"] = 64
    elif name in ("gqa", "gta"):
        changes["n_kv_heads"] = 8
    return replace(base, **changes)


@dataclass(frozen=True)
class KVRow:
    """One (variant, TP degree) row of the table."""

    variant: str
    tp: int
    head_dim_unit: int
    elements_per_token_total: int
    elements_per_token_per_device: int
    d_h_total: float
    d_h_per_device: float
    bytes_per_token_per_device_bf16: int
    arithmetic_intensity: float

    def to_dict(self) -> dict:
        return asdict(self)


def kv_elements_total(cfg: ModelConfig) -> int:
    """Cache elements per token per layer of the whole model (all devices together)."""
    return kv_elements_per_device(cfg, 1)


def kv_elements_per_device(cfg: ModelConfig, tp: int) -> int:
    """Cache elements per token per layer that one device of a TP-``tp`` group holds."""
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    dh, H = cfg.head_dim, cfg.n_heads
    if cfg.attention == "standard":
        return 2 * math.ceil(cfg.n_kv_heads / tp) * dh
    if cfg.attention == "gta":
        return math.ceil(cfg.n_kv_heads / tp) * dh + cfg.rope_dim
    if cfg.attention == "mfa":
        return 2 * dh
    if cfg.attention == "tpa":
        return 2 * cfg.tpa_rank * math.ceil(H / tp) + 2 * cfg.tpa_rank * dh
    return math.ceil(cfg.n_latent_heads / tp) * cfg.latent_head_dim + cfg.rope_dim


def arithmetic_intensity(cfg: ModelConfig, tp: int) -> float:
    """FLOPs per byte of cache read by one device for one decoded token (bf16 cache, absorbed
    decoding for the latent family): e.g. MLA ~1.9h, MLRA-4 at TP 4 ~1.67h."""
    heads = math.ceil(cfg.n_heads / tp)
    dh = cfg.head_dim
    cache_bytes = 2 * kv_elements_per_device(cfg, tp)
    if cfg.attention in ("standard", "gta", "mfa"):
        flops = 4 * heads * dh  # q.k and p.v per query head
    elif cfg.attention == "tpa":
        flops = heads * (4 * cfg.tpa_rank * dh + 4 * cfg.tpa_rank)
    else:
        L, w, dr = cfg.n_latent_heads, cfg.latent_head_dim, cfg.rope_dim
        heads_per_latent = cfg.n_heads // cfg.latent_groups
        if tp <= L:
            flops = math.ceil(L / tp) * heads_per_latent * (2 * (w + dr) + 2 * w)
        else:
            flops = math.ceil(heads_per_latent * L / tp) * (2 * (w + dr) + 2 * w)
    return flops / cache_bytes


def kv_rows(
    cfgs: dict[str, ModelConfig], unit: int, degrees: tuple[int, ...] = TP_DEGREES
) -> list[KVRow]:
    """Table rows for each named config and TP degree; ``unit`` is the d_h of the table."""
    rows = []
    for name, cfg in cfgs.items():
        total = kv_elements_total(cfg)
        for tp in degrees:
            per_dev = kv_elements_per_device(cfg, tp)
            rows.append(KVRow(
                variant=name, tp=tp, head_dim_unit=unit,
                elements_per_token_total=total, elements_per_token_per_device=per_dev,
                d_h_total=total / unit, d_h_per_device=per_dev / unit,
                bytes_per_token_per_device_bf16=2 * per_dev,
                arithmetic_intensity=round(arithmetic_intensity(cfg, tp), 2),
            ))
    return rows


def paper_decode_rows(degrees: tuple[int, ...] = TP_DEGREES) -> list[KVRow]:
    """The table of mlra-paper.md section 2.1 (64 heads, d_h 128)."""
    return kv_rows({name: decode_config(name) for name in VARIANTS}, 128, degrees)
