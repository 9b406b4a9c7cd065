"""The ``mlra`` command line. Each sub-command lives in a module of :mod:`mlra.commands` that
defines ``register(subparsers)``; modules are discovered, so adding a command touches no other
file. User errors (:class:`mlra.errors.MlraError`) print one line and exit with status 2."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

import mlra.commands
from mlra.atomic import fs_error
from mlra.errors import MlraError, MlraWarning


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="mlra",
        description="Multi-Head Low-Rank Attention: models, training, evaluation, decoding.",
        epilog="examples:\n  mlra compare\n  mlra train --model mlra_4 --steps 500 --out runs/t\n"
               "  mlra generate --checkpoint runs/t --prompt \"Once upon a time\"\n"
               "  mlra eval ppl --checkpoint runs/t\n"
               "Every command's --help ends with examples (mlra COMMAND --help).\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(mlra.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"mlra.commands.{info.name}")
        module.register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one line (``mlra: warning: ...``); others as Python prints them."""
    if issubclass(category, MlraWarning):
        print(f"mlra: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mlra`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        result = args.func(args)
    except MlraError as exc:
        print(f"mlra {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system fault not caught where it happened
        error = fs_error(exc, getattr(exc, "filename", None) or "a file", "access")
        if error is None:
            raise
        print(f"mlra {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlra {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
