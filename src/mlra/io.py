"""Compatibility names: atomic writes live in :mod:`mlra.atomic` (standard library only) and
our model format in :mod:`mlra.checkpoints.format`; load models with
:func:`mlra.load_checkpoint`."""

from mlra.atomic import atomic_write, atomic_write_text, fsync_dir
from mlra.checkpoints.format import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    load_state_checked,
    read_model_config,
    save_model,
)

__all__ = [
    "CONFIG_FILE", "FORMAT_NAME", "FORMAT_VERSION", "WEIGHTS_FILE", "atomic_write",
    "atomic_write_text", "fsync_dir", "load_state_checked", "read_model_config", "save_model",
]
