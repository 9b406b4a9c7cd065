"""One public loader, explicit tensor parallelism on the command line, and the layering of
``checkpoints/`` (format, run layout) below ``train/``; atomic writes without dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlra
from mlra.cli import build_parser

SRC = Path(mlra.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_import_mlra_does_not_import_the_trainer_or_the_cli():
    code = ("import sys, mlra; print(sorted(m for m in sys.modules if m.startswith("
            "('mlra.train', 'mlra.commands', 'mlra.parallel.cli', 'mlra.parallel.launch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_checkpoints_do_not_import_train():
    for path in (SRC / "checkpoints").glob("*.py"):
        assert not [m for m in _imports(path) if m.startswith("mlra.train")], path


def test_atomic_writes_need_only_the_standard_library():
    for name in ("atomic.py", "errors.py"):
        outside = {m for m in _imports(SRC / name)
                   if m.split(".")[0] not in sys.stdlib_module_names}
        assert outside <= {"mlra.errors"}, (name, outside)
    for path in (SRC / "data").glob("*.py"):  # writing shards never goes through the model
        assert "mlra.io" not in _imports(path) and "mlra.model" not in _imports(path), path


def test_no_library_code_swaps_stdout_and_no_module_global_tp_state():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    assert ast.unparse(t) not in ("sys.stdout", "sys.stderr"), path
            assert not isinstance(node, ast.Global), (path, node.lineno)
    import mlra.parallel.cli as tp_cli

    assert not hasattr(tp_cli, "_CURRENT") and not hasattr(tp_cli, "current")


@pytest.mark.parametrize("module, name", [
    ("mlra.io", "load_model"), ("mlra.generate", "load_inference_model"),
    ("mlra.checkpoints", "load_official"), ("mlra.checkpoints.cli", "load_from_args"),
    ("mlra.parallel.cli", "load_model"), ("mlra.parallel", "load_checkpoint_shard"),
    ("mlra.parallel", "load_shard"), ("mlra.parallel.api", "load_checkpoint_shard"),
    ("mlra.parallel.shard", "load_shard"), ("mlra.checkpoints.official", "load_official"),
])
def test_the_old_loader_entry_points_are_gone(module, name):
    import importlib

    assert not hasattr(importlib.import_module(module), name)


def test_every_checkpoint_command_shares_the_checkpoint_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for argv in (["generate", "--checkpoint", "C", "--ids", "1"],
                 ["eval", "ppl", "--checkpoint", "C"], ["convert", "C", "--out", "O"]):
        args = parser.parse_args([*argv, "--no-latent-scaling", "--no-verify", "--variant", "mla"])
        assert args.no_latent_scaling and args.verify is False and args.variant == "mla"
    assert "--no-latent-scaling" in sub["generate"].format_help()


def test_run_command_calls_the_work_once_with_a_single_rank_context():
    import argparse

    from mlra.parallel.cli import run_command

    calls = []
    args = argparse.Namespace(tp=None, device="cpu")
    assert run_command(args, lambda ctx, a: calls.append((ctx.rank, ctx.world_size,
                                                           str(ctx.device))) or 7) == 7
    assert calls == [(0, 1, "cpu")]
