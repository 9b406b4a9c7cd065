"""KV-cache accounting: elements per token per layer, in total and per device under tensor
parallelism, and the arithmetic intensity of decoding (paper, section 2).

One source of truth: the per-device numbers are what a tensor-parallel rank actually allocates
-- the cache layout (:class:`~mlra.attention.family.CacheLayout`) of the rank's local config in
the plan (:func:`mlra.parallel.plans.make_plan`) -- and the decode FLOPs are its family's
``decode_flops`` of that local config. The sharding rules themselves live with each family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from mlra.attention import CacheLayout, family_of
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


def local_config(cfg: ModelConfig, tp: int) -> ModelConfig:
    """The local config of rank 0 of a TP-``tp`` plan of ``cfg`` (every rank of a plan holds
    the same cache); ConfigError naming the allowed degrees when ``cfg`` cannot be split so."""
    from mlra.parallel.plans import make_plan

    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    return cfg if tp == 1 else make_plan(cfg, tp).shard(0).config


def kv_elements_per_device(cfg: ModelConfig, tp: int) -> int:
    """Cache elements per token per layer that one device of a TP-``tp`` group holds."""
    return CacheLayout.from_config(local_config(cfg, tp)).elements_per_token


def arithmetic_intensity(cfg: ModelConfig, tp: int) -> float:
    """FLOPs per byte of cache read by one device for one decoded token (bf16 cache, absorbed
    decoding for the latent family): e.g. MLA ~1.9h, MLRA-4 at TP 4 ~1.67h."""
    local = local_config(cfg, tp)
    cache_bytes = 2 * CacheLayout.from_config(local).elements_per_token
    return family_of(local).decode_flops(local) / cache_bytes


def kv_rows(
    cfgs: dict[str, ModelConfig], unit: int, degrees: tuple[int, ...] = TP_DEGREES
) -> list[KVRow]:
    """Table rows for each named config and TP degree; ``unit`` is the d_h of the table.
    Degrees a config cannot be split into (its family's ``tp_degrees``) have no row."""
    rows = []
    for name, cfg in cfgs.items():
        total = kv_elements_total(cfg)
        allowed = set(family_of(cfg).tp_degrees(cfg))
        for tp in degrees:
            if tp not in allowed:
                continue
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
    """The table of the paper's section 2.1 (64 heads, d_h 128)."""
    return kv_rows({name: decode_config(name) for name in VARIANTS}, 128, degrees)
