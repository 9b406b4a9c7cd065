"""Model configuration: one dataclass for every attention variant, named presets, JSON io.

Variants are configuration, not code: the eleven attention variants of the paper are five
attention *families* (``standard``, ``gta``, ``mfa``, ``tpa``, ``latent``) with different
settings. MLA, GLA-G and MLRA-B are one ``latent`` family with a (branches x groups) grid of
latent heads (``docs/design.md``). What a family checks, counts and caches is asked of its
:class:`~mlra.attention.family.AttentionFamily` (the registry in :mod:`mlra.attention`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from mlra.errors import ConfigError

FAMILIES = ("standard", "gta", "mfa", "tpa", "latent")
"""The built-in attention families (more can be registered: :func:`mlra.attention.register`)."""

VARIANTS = (
    "mha", "mqa", "gqa", "gta", "mfa", "tpa", "mla", "gla_2", "gla_4", "mlra_2", "mlra_4",
)
"""The paper's eleven variant names, in the paper's table order."""

SIZES = ("tiny", "small", "1b", "paper")
"""Preset sizes: ``tiny`` trains on a laptop CPU, ``paper`` is the paper's 2.9B configuration."""

# The paper's 2.9B configurations (docs/checkpoints.md): MLP widths chosen
# by the authors so that every variant lands at 2.872-2.873B parameters.
_PAPER_INTERMEDIATE = {
    "mha": 8192, "mqa": 10152, "gqa": 9728, "gta": 9960, "mfa": 8024, "tpa": 10760,
    "mla": 9448, "gla_2": 10048, "gla_4": 10136, "mlra_2": 10048, "mlra_4": 9880,
}

# Shape of each size: hidden width, layers, heads, head width, vocabulary, context.
_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, head_dim=32, vocab_size=512, max_seq_len=256),
    "small": dict(
        d_model=768, n_layers=12, n_heads=12, head_dim=64, vocab_size=50304, max_seq_len=1024
    ),
    "1b": dict(
        d_model=2048, n_layers=16, n_heads=16, head_dim=128, vocab_size=50304, max_seq_len=2048
    ),
    "paper": dict(
        d_model=3072, n_layers=24, n_heads=24, head_dim=128, vocab_size=50304, max_seq_len=2048
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """Configuration of a decoder-only LM with one attention variant.

    Fields that do not apply to the chosen ``family`` are ignored (and kept at their defaults
    by the presets). Use :meth:`preset` for the paper's variants.
    """

    name: str = "custom"
    family: str = "standard"
    vocab_size: int = 50304
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 2048
    max_seq_len: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # standard / gta: number of K/V heads (n_heads = MHA, 1 = MQA, between = GQA).
    n_kv_heads: int = 12
    # latent / gta: width of the decoupled RoPE key (shared by all heads).
    rope_dim: int = 64
    # latent / mfa: width of the query bottleneck (d_c' in the paper).
    q_lora_rank: int = 1024
    # latent: total KV latent width d_c, split into latent_branches x latent_groups latent heads.
    kv_lora_rank: int = 512
    latent_branches: int = 1
    latent_groups: int = 1
    # tpa: ranks of the K/V and Q factorisations.
    tpa_rank: int = 2
    tpa_q_rank: int = 6
    # Ablation switches of the paper.
    output_gate: bool = False
    latent_scaling: bool = True
    zero_init_output: bool = True
    # Latent family: override of the 1/sqrt(branches) output scale (tensor-parallel shards that
    # hold a subset of the branches keep the full model's scale). None = derived.
    output_scale: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field and the constraint it violates."""
        from mlra.attention import families, get_family  # the registry imports this module

        if self.family not in families():
            raise ConfigError(
                f"family={self.family!r} is not a known attention family; choose one of "
                f"{families()}"
            )
        family = get_family(self.family)
        positive = ["vocab_size", "d_model", "n_layers", "n_heads", "head_dim",
                    "intermediate_size", "max_seq_len", *family.required]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.rope_base <= 0:
            raise ConfigError(f"rope_base must be positive, got {self.rope_base}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        family.validate(self)

    # ------------------------------------------------------------------ derived
    @property
    def attention(self) -> str:
        """Former name of :attr:`family` (read-only; configs saved with it still load)."""
        return self.family

    @property
    def n_latent_heads(self) -> int:
        """Number of latent heads (latent family): branches x groups."""
        return self.latent_branches * self.latent_groups

    @property
    def latent_head_dim(self) -> int:
        """Width of one latent head (latent family)."""
        return self.kv_lora_rank // self.n_latent_heads

    @property
    def attn_out_dim(self) -> int:
        """Width of the concatenated head outputs entering the output projection."""
        return self.n_heads * self.head_dim

    @cached_property
    def softmax_scale(self) -> float:
        """Softmax scale of the attention logits (1/sqrt of the q.k width of the training form),
        asked of the family once per config (every decode step of every layer reads it)."""
        from mlra.attention import get_family

        return get_family(self.family).softmax_scale(self)

    def num_params(self) -> int:
        """Number of unique parameters (tied embedding counted once), computed analytically."""
        d, L = self.d_model, self.n_layers
        per_layer = _attention_params(self) + 3 * d * self.intermediate_size + 2 * d
        return L * per_layer + self.vocab_size * d + d

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, size: str = "paper", **overrides: Any) -> ModelConfig:
        """The paper's configuration of variant ``name`` at ``size`` (tiny/small/1b/paper).

        ``overrides`` replace any field afterwards (e.g. ``latent_branches=8``), except that
        ``output_gate=True`` also narrows the MLP by the gate's parameters, as the paper does to
        keep the parameter count matched.
        """
        key = name.lower().replace("-", "_")
        if key not in VARIANTS:
            raise ConfigError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
        if size not in SIZES:
            raise ConfigError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {sorted(unknown)}; valid fields: "
                f"{', '.join(f.name for f in fields(cls))}"
            )
        base = _variant_config(key, size)
        if size == "paper":
            inter = _PAPER_INTERMEDIATE[key]
        else:
            inter = _matched_intermediate(base, _variant_config("mha", size))
        cfg = replace(base, intermediate_size=inter)
        if overrides.get("output_gate"):
            gate_params = cfg.d_model * cfg.attn_out_dim
            inter -= round(gate_params / (3 * cfg.d_model))
        cfg = replace(cfg, intermediate_size=inter)
        try:
            return replace(cfg, **overrides)
        except TypeError as exc:  # pragma: no cover - guarded by the field check above
            raise ConfigError(str(exc)) from exc

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        if "attention" in data and "family" not in data:  # configs saved before the rename
            data = {("family" if k == "attention" else k): v for k, v in data.items()}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)} in model config")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a config written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"model config {p} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config {p} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _attention_params(cfg: ModelConfig) -> int:
    """Parameters of one attention layer (weights of every projection, norms, gate)."""
    from mlra.attention import get_family

    out = cfg.n_heads * cfg.head_dim * cfg.d_model
    gate = cfg.d_model * cfg.attn_out_dim if cfg.output_gate else 0
    return out + gate + get_family(cfg.family).param_count(cfg)


def _variant_config(name: str, size: str) -> ModelConfig:
    """The attention settings of a variant at a size, before the MLP width is chosen."""
    s = _SHAPES[size]
    d, H, dh = s["d_model"], s["n_heads"], s["head_dim"]
    paper = size == "paper"
    kv_groups = 6 if paper else (H // 4 if H >= 8 else H // 2)
    q_lora = 1024 if paper else _round_to(d / 3, 16)
    common = dict(s, name=name, intermediate_size=1)
    latent = dict(
        common, family="latent", rope_dim=dh // 2, kv_lora_rank=4 * dh, q_lora_rank=q_lora
    )
    table: dict[str, dict[str, Any]] = {
        "mha": dict(common, family="standard", n_kv_heads=H),
        "mqa": dict(common, family="standard", n_kv_heads=1),
        "gqa": dict(common, family="standard", n_kv_heads=kv_groups),
        "gta": dict(common, family="gta", n_kv_heads=kv_groups, rope_dim=dh // 2),
        "mfa": dict(
            common, family="mfa", head_dim=2 * dh,
            q_lora_rank=2048 if paper else _round_to(2 * d / 3, 16),
        ),
        "tpa": dict(common, family="tpa", tpa_rank=2, tpa_q_rank=6),
        "mla": dict(latent, q_lora_rank=1536 if paper else d // 2),
        "gla_2": dict(latent, latent_groups=2),
        "gla_4": dict(latent, latent_groups=4),
        "mlra_2": dict(latent, latent_branches=2, latent_groups=2),
        "mlra_4": dict(latent, latent_branches=4),
    }
    return ModelConfig(**table[name])


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def _matched_intermediate(cfg: ModelConfig, mha: ModelConfig) -> int:
    """MLP width that gives ``cfg`` the parameter count of MHA at the same size.

    MHA's width is 8/3 of the hidden size (as the paper's 8192 for 3072); every other variant
    spends the attention parameters it saves (or costs) on the MLP, as the paper does.
    """
    mha_inter = _round_to(8 * mha.d_model / 3, 32)
    target = _attention_params(mha) + 3 * mha.d_model * mha_inter
    return max(8, _round_to((target - _attention_params(cfg)) / (3 * cfg.d_model), 8))
