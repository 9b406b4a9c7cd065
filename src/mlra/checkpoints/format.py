"""Our model format: a directory with ``config.json`` + ``model.safetensors``.

``config.json`` holds ``{"format": "mlra", "format_version": 1, "model": {...}, "checksums":
{"model.safetensors": "sha256:..."}, ...}``. The weights are written first (atomically), then
the config with their checksum, so a directory with a config always has the weights it
describes; :func:`_load_model_dir` verifies the checksum unless told not to. Directories written
before checksums existed load without the check.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mlra.atomic import atomic_write, atomic_write_text, fs_error, make_dirs
from mlra.checkpoints.integrity import file_checksum, verify_files
from mlra.config import ModelConfig
from mlra.errors import CheckpointError, ConfigError
from mlra.model import Transformer

FORMAT_NAME = "mlra"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_model(model: Transformer, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` to ``directory`` in our format (weights atomically, then the config
    with the weights' checksum)."""
    directory = make_dirs(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(), **(extra or {}),
            "checksums": {WEIGHTS_FILE: file_checksum(directory / WEIGHTS_FILE)}}
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def read_model_meta(directory: str | Path) -> dict:
    """The parsed ``config.json`` of one of our model directories (CheckpointError naming the
    file when it is missing, not JSON, or not ours)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: not an mlra model directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise (fs_error(exc, path, "read") or CheckpointError(f"{path}: {exc}")) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or "model" not in meta:
        raise CheckpointError(f"{path} is not an mlra model config (no 'format': 'mlra')")
    return meta


def read_model_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in one of our model directories."""
    path = Path(directory) / CONFIG_FILE
    meta = read_model_meta(directory)
    try:
        return ModelConfig.from_dict(meta["model"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from exc


def verify_model_dir(directory: str | Path) -> None:
    """Check the files of a model directory against the checksums its config records."""
    directory = Path(directory)
    sums = read_model_meta(directory).get("checksums")
    if sums:
        verify_files(directory, sums, str(directory / CONFIG_FILE))


def _load_model_dir(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> Transformer:
    """A model saved by :func:`save_model` (eval mode); the public entry point is
    :func:`mlra.load_checkpoint`. Errors name the file and key at fault."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    cfg = read_model_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    if verify:
        verify_model_dir(directory)
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is corrupt or truncated: {exc}") from exc
    with torch.device("meta"):
        model = Transformer(cfg)
    load_state_checked(model, state, source=str(weights))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(assign=True)`` with errors naming the first missing/unexpected key or
    shape mismatch and the file it came from."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing)")
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(value.shape)}"
            )
    model.load_state_dict(state, assign=True)
    # assign=True keeps the checkpoint's tensors; re-tie nothing: the head reads embed.weight.
