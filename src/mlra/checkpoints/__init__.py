"""Loading any checkpoint a user may hold: our model directories, training runs, and the
published (official) MLRA checkpoints.

``load_checkpoint(path)`` looks at what ``path`` is and dispatches:

- our model directory (``config.json`` with ``"format": "mlra"`` + ``model.safetensors``):
  :func:`mlra.io.load_model`;
- a training run directory (the newest checkpoint it holds, followed through ``RUN/latest``);
- an official Hugging Face-style directory (``config.json`` with ``model_type`` "gpt2" and
  ``pytorch_model*.bin``): :func:`mlra.checkpoints.official.load_official`, variant inferred.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mlra.checkpoints.official import (
    full_variant_name,
    is_official_dir,
    load_official,
    parse_variant,
    resolve_official_config,
    variant_name,
)
from mlra.checkpoints.safety import load_weights_file
from mlra.data.tokenizers import (
    TOKENIZER_FILE,
    GPT2Tokenizer,
    Tokenizer,
    get_tokenizer,
    has_tokenizer,
    load_tokenizer,
)
from mlra.errors import CheckpointError, ConfigError, DataError
from mlra.io import CONFIG_FILE, FORMAT_NAME, load_model, read_model_config
from mlra.model import Transformer
from mlra.train.checkpoints import LATEST, list_checkpoints, resolve_checkpoint

__all__ = [
    "checkpoint_kind", "checkpoint_tokenizer", "full_variant_name", "load_checkpoint",
    "load_official", "load_weights_file", "parse_variant", "resolve_checkpoint_dir",
    "resolve_official_config", "variant_name",
]


def _is_mlra_dir(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT_NAME
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


def checkpoint_kind(path: str | Path) -> str:
    """``"mlra"``, ``"run"`` or ``"official"``; :class:`CheckpointError` for anything else."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_file():
        raise CheckpointError(
            f"{p} is a file; pass the checkpoint directory (our model directory, a training run, "
            "or an official Hugging Face-style directory)"
        )
    if _is_mlra_dir(p):
        return "mlra"
    if is_official_dir(p):
        return "official"
    if (p / LATEST).is_file() or list_checkpoints(p):
        return "run"
    raise CheckpointError(
        f"{p} is not a checkpoint: expected our model directory (config.json with "
        "\"format\": \"mlra\" + model.safetensors), a training run directory (with 'latest'), "
        "or an official directory (config.json + pytorch_model.bin or sharded "
        "pytorch_model-*.bin with pytorch_model.bin.index.json)"
    )


def resolve_checkpoint_dir(path: str | Path) -> tuple[str, Path]:
    """(kind, directory holding the weights): ``"mlra"`` or ``"official"``; a training run
    resolves to the model of its ``latest`` (else newest complete) checkpoint."""
    p = Path(path)
    kind = checkpoint_kind(p)
    if kind == "run":
        resolved = resolve_checkpoint(p)
        if not _is_mlra_dir(resolved):
            raise CheckpointError(f"{resolved} holds no model (config.json + model.safetensors)")
        return "mlra", resolved
    return kind, p


def load_checkpoint(
    path: str | Path,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    latent_scaling: bool | None = None,
) -> Transformer:
    """Load a model from any supported checkpoint directory (eval mode).

    ``variant`` (e.g. ``"mlra_4"``, ``"mla_no_scale"``, ``"gqa_gated"``) is needed only for
    official checkpoints of the no-scale ablations (the weights cannot tell); otherwise it is
    inferred and, when given, must match the files. ``latent_scaling=False`` is the same as the
    ``_no_scale`` suffix. Raises :class:`~mlra.errors.CheckpointError` with a one-line reason.
    """
    kind, directory = resolve_checkpoint_dir(path)
    if kind == "official":
        return load_official(directory, variant, latent_scaling, device=device, dtype=dtype)
    cfg = read_model_config(directory)
    if variant is not None:
        try:
            req = parse_variant(variant)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from exc
        if req.base != variant_name(cfg):
            raise CheckpointError(
                f"--variant {variant} does not match {directory}: it holds "
                f"{full_variant_name(cfg)}"
            )
    if latent_scaling is not None and cfg.attention == "latent" and (
        latent_scaling != cfg.latent_scaling
    ):
        raise CheckpointError(
            f"{directory} records latent_scaling={cfg.latent_scaling}; it cannot be overridden"
        )
    model = load_model(directory, device="cpu", dtype=dtype)
    return model.to(device).eval()


def checkpoint_tokenizer(
    path: str | Path, spec: str | None = None, gpt2_file: str | Path | None = None
) -> Tokenizer:
    """The tokenizer to use with the checkpoint at ``path``.

    ``spec`` (``byte``, ``gpt2`` or a tokenizer file path) wins; otherwise an official
    checkpoint uses GPT-2 BPE (vocabulary from ``gpt2_file`` / ``$MLRA_GPT2_BPE`` / the cache,
    located when first needed) and our directories the tokenizer saved with them.
    """
    if spec is not None:
        return get_tokenizer(spec, gpt2_file)
    kind, directory = resolve_checkpoint_dir(path)
    if kind == "official":
        return GPT2Tokenizer(gpt2_file)
    if has_tokenizer(directory):
        return load_tokenizer(directory)
    raise DataError(
        f"{directory} has no {TOKENIZER_FILE}: say which tokenizer its model was trained with "
        f"(--tokenizer byte|gpt2|PATH/{TOKENIZER_FILE})"
    )
