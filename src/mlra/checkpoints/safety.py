"""Reading weight files without executing anything they contain.

PyTorch ``.bin`` files are pickles: a hostile one can run arbitrary code when unpickled. We only
ever read them with ``torch.load(weights_only=True)``, whose restricted unpickler accepts
tensors and plain containers and refuses everything else; a refusal is reported as an unsafe
file (never retried with full unpickling). ``.safetensors`` files cannot carry code at all.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mlra.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


def load_weights_file(path: str | Path) -> StateDict:
    """Tensors of one ``.bin`` (restricted unpickling, memory-mapped when possible) or
    ``.safetensors`` file, on CPU.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated or corrupt,
    when it is not a flat mapping of names to tensors, or when reading it would need arbitrary
    unpickling (the file is refused and nothing in it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} is missing")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is corrupt or truncated: {exc}") from exc
    else:
        state = _torch_load_restricted(path)
    return _check_flat_tensors(state, path)


def _torch_load_restricted(path: Path) -> object:
    # mmap keeps a 12 GB checkpoint out of RAM until a tensor is touched; it needs the zip
    # container that torch.save writes by default, so legacy files are read without it.
    use_mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if "weights only load failed" in text or "unsupported global" in text:
            raise CheckpointError(
                f"{path} was refused: reading it would need arbitrary (unsafe) unpickling, which "
                "can execute code. Only plain tensor state dicts are accepted; if you trust the "
                "file, convert it to safetensors yourself."
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated: {exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated: {_first_line(exc)}") from exc


def _check_flat_tensors(state: object, path: Path) -> StateDict:
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} does not hold a state dict (found {type(state).__name__}, expected a "
            "mapping of parameter names to tensors)"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a "
                "flat mapping of parameter names to tensors"
            )
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
