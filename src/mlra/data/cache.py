"""The user cache directory: ``$MLRA_CACHE``, else ``$XDG_CACHE_HOME/mlra``, else
``~/.cache/mlra``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where prepared built-in corpus shards (and an optional GPT-2 vocabulary) live."""
    env = os.environ.get("MLRA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mlra"
