"""The run configuration of ``mlra train``: one dataclass, readable from a JSON/TOML file, every
field overridable on the command line."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mlra.config import SIZES, VARIANTS, ModelConfig
from mlra.errors import ConfigError

# Peak learning rates by preset size (the paper's 1.6e-4 is for its 2.9B models).
DEFAULT_LR = {"tiny": 1e-3, "small": 6e-4, "1b": 3e-4, "paper": 1.6e-4}

# Options that must not change when a run is resumed (they change the model or the data order).
RESUME_FIXED = ("model", "size", "model_overrides", "data", "val_data", "seq_len", "seed",
                "shuffle", "tokenizer")

# Options that change only what is shown, never the trained weights or the metrics.
PRESENTATION_ONLY = ("progress",)


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` means "derived" (see :meth:`resolved`)."""

    model: str = "mlra_4"
    size: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "builtin"
    val_data: str | None = None
    tokenizer: str | None = None
    gpt2_file: str | None = None
    out: str | None = None
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int | None = None
    lr: float | None = None
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    decay_all: bool = False
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_interval: int = 100
    val_tokens: int = 262_144
    ckpt_interval: int | None = None
    keep_last: int = 3
    log_interval: int = 10
    seed: int = 1234
    shuffle: bool = True
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    fsdp: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option at fault."""
        if self.model.lower().replace("-", "_") not in VARIANTS:
            raise ConfigError(f"--model {self.model!r} is unknown; choose one of "
                              f"{', '.join(VARIANTS)}")
        if self.size not in SIZES:
            raise ConfigError(f"--size {self.size!r} is unknown; choose one of {', '.join(SIZES)}")
        for name in ("steps", "batch_size", "grad_accum", "log_interval", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("eval_interval", "val_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{_flag(name)} must be a non-negative integer, got {value!r}")
        for name in ("seq_len", "warmup_steps", "ckpt_interval"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0 or
                                      (name == "seq_len" and value < 1)):
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.eps <= 0:
            raise ConfigError("--weight-decay and --grad-clip must be >= 0 and --eps > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if not isinstance(self.model_overrides, dict):
            raise ConfigError("model_overrides must be a mapping of ModelConfig fields to values")

    # ------------------------------------------------------------------ derived values
    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The model of this run; ``vocab_size`` (from the tokenizer) unless overridden."""
        overrides = dict(self.model_overrides)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        cfg = ModelConfig.preset(self.model, size=self.size, **overrides)
        if self.seq_len is not None and self.seq_len > cfg.max_seq_len:
            cfg = replace(cfg, max_seq_len=self.seq_len)
        return cfg

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.size]

    @property
    def warmup(self) -> int:
        """Warm-up steps: as given, else 2% of the run (the paper's 2000 of 100K)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, round(0.02 * self.steps))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {unknown}; valid: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def _flag(name: str) -> str:
    return name.replace("_", "-")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a JSON or TOML file (keys are option names, ``-`` or ``_``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError as exc:  # Python 3.10
                raise ConfigError("TOML config files need Python >= 3.11; use JSON") from exc
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"config file {p} is not valid {p.suffix[1:] or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` (VALUE parsed as JSON when possible, else kept as a string)."""
    if "=" not in text:
        raise ConfigError(f"--set expects FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed
