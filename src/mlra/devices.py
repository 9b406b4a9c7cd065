"""``--device`` and ``--dtype`` for every command and the trainer: one parser of each."""

from __future__ import annotations

import torch

from mlra.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``--dtype`` names (the aliases fp32 / bf16 / fp16 are accepted too)."""

_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_device(spec: str | None, local_rank: int | None = None) -> torch.device:
    """``--device`` -> torch device. None or ``auto``: CUDA when available, else the CPU;
    plain ``cuda`` with ``local_rank`` is that GPU (one per process under torchrun). A
    malformed name, CUDA on a machine without it, or a GPU index beyond the visible GPUs is a
    :class:`ConfigError`."""
    if spec in (None, "auto"):
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"--device {spec!r} is not a valid torch device (cpu, cuda, cuda:1, "
                          "...)") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {spec}: this machine has {count} visible GPU"
                              f"{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")
    return device


def parse_dtype(name: str | None, device: torch.device | None = None) -> torch.dtype | None:
    """``--dtype`` name -> torch dtype. None stays None, unless ``device`` is given: then the
    default for it (bfloat16 on a GPU, float32 elsewhere)."""
    if name is None:
        if device is None:
            return None
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    key = _ALIASES.get(name, name)
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[key]
