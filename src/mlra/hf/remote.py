"""The modules a saved directory carries for ``trust_remote_code``.

``config.json``'s ``auto_map`` points ``AutoConfig`` and ``AutoModelForCausalLM`` at
``configuration_mlra.py`` and ``modeling_mlra.py`` in the directory; both only re-export the
classes of the installed ``mlra`` package, so a directory never holds a stale copy of the model.
"""

from __future__ import annotations

from pathlib import Path

from mlra.io import atomic_write_text

_HEADER = (
    '"""MLRA for transformers: the classes come from the installed mlra package\n'
    "(pip install 'mlra[hf]'); this file lets AutoConfig / AutoModelForCausalLM find them with\n"
    'trust_remote_code=True."""\n\n'
)

REMOTE_FILES = {
    "configuration_mlra.py": _HEADER + "from mlra.hf.config import MlraConfig\n\n"
    '__all__ = ["MlraConfig"]\n',
    "modeling_mlra.py": _HEADER + "from mlra.hf.config import MlraConfig\n"
    "from mlra.hf.modeling import MlraForCausalLM\n\n"
    '__all__ = ["MlraConfig", "MlraForCausalLM"]\n',
}


def write_remote_code(directory: str | Path) -> None:
    """Write the ``auto_map`` modules into ``directory``."""
    for name, text in REMOTE_FILES.items():
        atomic_write_text(Path(directory) / name, text)
