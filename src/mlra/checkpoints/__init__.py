"""Loading any checkpoint a user may hold: our model directories, training runs, and the
published (official) MLRA checkpoints -- through one function, :func:`load_checkpoint`
(also ``mlra.load_checkpoint``).

``load_checkpoint(path)`` looks at what ``path`` holds and dispatches:

- our model directory (``config.json`` with ``"format": "mlra"`` + ``model.safetensors``),
  its checksum verified (:mod:`mlra.checkpoints.format`);
- a training run directory: the checkpoint named by ``RUN/latest``
  (:mod:`mlra.checkpoints.runs`);
- an official Hugging Face-style directory (``config.json`` with ``model_type`` "gpt2" and
  ``pytorch_model*.bin``), variant inferred (:mod:`mlra.checkpoints.official`);
- with ``tp`` (a :class:`~mlra.parallel.TPContext` of several ranks): this rank's shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mlra.checkpoints.format import (
    CONFIG_FILE,
    FORMAT_NAME,
    _load_model_dir,
    read_model_config,
    verify_model_dir,
)
from mlra.checkpoints.official import (
    _load_official,
    full_variant_name,
    is_official_dir,
    parse_variant,
    resolve_official_config,
    variant_name,
)
from mlra.checkpoints.runs import CHECKPOINTS, LATEST, TRAINER_TENSORS, resolve_checkpoint
from mlra.checkpoints.safety import load_weights_file
from mlra.data.tokenizers import (
    TOKENIZER_FILE,
    GPT2Tokenizer,
    Tokenizer,
    get_tokenizer,
    load_tokenizer,
)
from mlra.errors import CheckpointError, ConfigError, DataError
from mlra.model import Transformer

if TYPE_CHECKING:
    from mlra.parallel.runtime import TPContext

__all__ = [
    "checkpoint_kind", "checkpoint_tokenizer", "full_variant_name", "load_checkpoint",
    "load_weights_file", "parse_variant", "resolve_checkpoint_dir", "resolve_official_config",
    "variant_name",
]


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it from a good "
                              "copy") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; restore it from a good copy")
    return data


def _ours_without_config(p: Path) -> str | None:
    """What marks ``p`` as one of our directories although it lacks a usable config."""
    if (p / TRAINER_TENSORS).is_file():  # (trainer_state.json alone is also Hugging Face's)
        return TRAINER_TENSORS
    tok = p / TOKENIZER_FILE
    if tok.is_file():
        try:
            if json.loads(tok.read_text(encoding="utf-8")).get("format") == "mlra-tokenizer":
                return TOKENIZER_FILE
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError):
            pass
    return None


def checkpoint_kind(path: str | Path) -> str:
    """``"mlra"``, ``"run"`` or ``"official"``, decided from the files ``path`` holds before
    anything else is read; :class:`CheckpointError` for anything else (a missing or broken
    ``config.json`` of our own directories is named as such)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_file():
        raise CheckpointError(
            f"{p} is a file; pass the checkpoint directory (our model directory, a training run, "
            "or an official Hugging Face-style directory)"
        )
    cfg_path = p / CONFIG_FILE
    ours = _ours_without_config(p)
    if cfg_path.is_file():
        meta = _read_json_object(cfg_path)
        if meta.get("format") == FORMAT_NAME:
            return "mlra"
        if ours is not None:
            raise CheckpointError(
                f"{cfg_path} is not an mlra model config (no \"format\": \"mlra\"), although "
                f"{p} holds our {ours}; restore config.json from a good copy"
            )
        if is_official_dir(p):
            return "official"
    elif ours is not None:
        raise CheckpointError(
            f"{cfg_path} is missing: {p} holds our {ours} but not the model config; restore "
            "config.json from a good copy (or load the run directory to use its newest complete "
            "checkpoint)"
        )
    elif (p / LATEST).is_file() or (p / CHECKPOINTS).is_dir():
        return "run"
    elif is_official_dir(p):
        return "official"
    raise CheckpointError(
        f"{p} is not a checkpoint: expected our model directory (config.json with "
        "\"format\": \"mlra\" + model.safetensors), a training run directory (with 'latest'), "
        "or an official directory (config.json + pytorch_model.bin or sharded "
        "pytorch_model-*.bin with pytorch_model.bin.index.json)"
    )


def resolve_checkpoint_dir(path: str | Path) -> tuple[str, Path]:
    """(kind, directory holding the weights): ``"mlra"`` or ``"official"``; a training run
    resolves to the model of its ``latest`` (else newest complete) checkpoint, with a warning
    when that is not the newest one it holds."""
    p = Path(path)
    kind = checkpoint_kind(p)
    if kind == "run":
        resolved = resolve_checkpoint(p)
        return checkpoint_kind(resolved), resolved
    return kind, p


def _check_request(
    directory: Path, cfg, variant: str | None, latent_scaling: bool | None
) -> None:
    """A ``variant`` / ``latent_scaling`` asked for must match what our directory holds."""
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
    # latent_scaling is a latent-family ablation; other families ignore the flag
    if latent_scaling is not None and cfg.family == "latent" and (
        latent_scaling != cfg.latent_scaling
    ):
        raise CheckpointError(
            f"{directory} records latent_scaling={cfg.latent_scaling}; it cannot be overridden"
        )


def load_checkpoint(
    path: str | Path,
    variant: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    latent_scaling: bool | None = None,
    *,
    tp: TPContext | None = None,
    verify: bool = True,
) -> Transformer:
    """Load a model from any supported checkpoint directory (eval mode) -- the one loader every
    command and library caller uses.

    ``variant`` (e.g. ``"mlra_4"``, ``"mla_no_scale"``, ``"gqa_gated"``) is needed only for
    official checkpoints of the no-scale ablations (the weights cannot tell); otherwise it is
    inferred and, when given, must match the files. ``latent_scaling=False`` is the same as the
    ``_no_scale`` suffix. ``tp``: inside a tensor-parallel rank (see
    :func:`mlra.parallel.launch`), that rank's :class:`~mlra.parallel.TensorParallelTransformer`
    shard on ``tp.device`` (``device`` is ignored); a single-rank context gives the full model.
    ``verify`` checks our files against the checksums written with them (a changed byte is
    refused naming the file); ``verify=False`` skips the extra read of the weights. Official
    checkpoints carry no checksums. Raises :class:`~mlra.errors.CheckpointError` with a
    one-line reason.
    """
    kind, directory = resolve_checkpoint_dir(path)
    sharded = tp is not None and tp.world_size > 1
    if kind == "official":
        if not sharded:
            return _load_official(directory, variant, latent_scaling, device=device, dtype=dtype)
        from mlra.parallel.shard import shard_model

        full = _load_official(directory, variant, latent_scaling, device="cpu", dtype=dtype)
        return shard_model(full, tp, dtype=dtype)  # .bin pickles cannot be read in slices
    _check_request(directory, read_model_config(directory), variant, latent_scaling)
    if sharded:
        from mlra.parallel.shard import _load_shard

        if verify:
            verify_model_dir(directory)
        return _load_shard(directory, tp, dtype=dtype)  # reads only this rank's slices
    model = _load_model_dir(directory, device="cpu", dtype=dtype, verify=verify)
    return model.to(device).eval()


def checkpoint_tokenizer(
    path: str | Path, spec: str | None = None, gpt2_file: str | Path | None = None
) -> Tokenizer:
    """The tokenizer to use with the checkpoint at ``path``.

    ``spec`` (``byte``, ``gpt2`` or a ``tokenizer.json`` path) wins; otherwise an official
    checkpoint uses GPT-2 BPE (vocabulary from ``gpt2_file`` / ``$MLRA_GPT2_BPE`` / the cache,
    located when first needed) and our directories the ``tokenizer.json`` saved with them.
    """
    if spec is not None:
        return get_tokenizer(spec, gpt2_file)
    kind, directory = resolve_checkpoint_dir(path)
    if kind == "official":
        return GPT2Tokenizer(gpt2_file)
    if (directory / TOKENIZER_FILE).is_file():
        return load_tokenizer(directory)
    raise DataError(
        f"{directory} has no {TOKENIZER_FILE}: say which tokenizer its model was trained with "
        "(--tokenizer byte|gpt2|PATH/tokenizer.json)"
    )
