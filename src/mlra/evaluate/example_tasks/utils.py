"""Data of the example tasks: JSONL files next to this module, read wherever the package is
installed (lm-eval resolves ``data_files`` against the working directory, so the YAMLs load
them through ``custom_dataset`` instead)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def _split(name: str) -> dict[str, Any]:
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def choice_docs(**kwargs: Any) -> dict[str, Any]:
    """The multiple-choice questions of ``mlra_example_choice``."""
    return _split("example_choice.jsonl")


def text_docs(**kwargs: Any) -> dict[str, Any]:
    """The texts of ``mlra_example_text`` (rolling log-likelihood)."""
    return _split("example_text.jsonl")
