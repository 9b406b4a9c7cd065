"""``mlra bench``: GPU benchmarks, one sub-command per module of :mod:`mlra.bench` that defines
``register(subparsers)`` (``mlra bench decode``; others can add e.g. ``e2e`` as a new module)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import mlra.bench


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="GPU benchmarks (decode kernels, ...)", description=__doc__,
        epilog="examples:\n  mlra bench decode --help\n  mlra bench decode\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(mlra.bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mlra.bench.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
