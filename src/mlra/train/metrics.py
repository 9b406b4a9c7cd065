"""The JSON-lines metrics log of a run and its loss-curve plots (matplotlib optional)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlra.atomic import atomic_write, atomic_write_text, fs_error, make_dirs

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line with ``step`` and ``split``
    (``train`` or ``val``). Resuming truncates rows after the resumed step, so the log of a
    resumed run reads as the log of an uninterrupted one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.rows() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write_text(self.path, text)

    def log(self, row: Mapping[str, Any]) -> None:
        make_dirs(self.path.parent)
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(dict(row)) + "\n")
                f.flush()
        except OSError as exc:
            error = fs_error(exc, self.path)
            if error is None:
                raise
            raise error from exc


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics log (a torn last line from a killed run is skipped)."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _import_pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_run(rows: Iterable[Mapping[str, Any]], path: str | Path, title: str = "") -> bool:
    """Training and validation loss against step as a PNG. Returns False (and writes nothing)
    when matplotlib is not installed."""
    plt = _import_pyplot()
    if plt is None:
        return False
    rows = list(rows)
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"
             and math.isfinite(r.get("loss", math.nan))]
    val = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", lw=1.5, ms=3)
    _finish(plt, fig, ax, path, "step", "loss (nats/token)", title)
    return True


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, xlabel: str,
    ylabel: str, title: str = "", log_y: bool = False,
) -> bool:
    """Several named curves on one axis as a PNG; False when matplotlib is missing."""
    plt = _import_pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, points in curves.items():
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label=name, lw=1.5, ms=3)
    if log_y:
        ax.set_yscale("log")
    _finish(plt, fig, ax, path, xlabel, ylabel, title)
    return True


def _finish(plt: Any, fig: Any, ax: Any, path: str | Path, xlabel: str, ylabel: str,
            title: str) -> None:
    """Labels, grid and legend; write the figure to ``path`` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def _save(fig: Any, path: str | Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, bbox_inches="tight", format="png"))
