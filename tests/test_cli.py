"""The CLI turns user errors into one-line messages with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlra.cli import main


@pytest.mark.parametrize(
    "argv",
    [["kv-table", "--model", "nope"], ["kv-table", "--tp", "x"], ["kv-table", "--tp", "0"]],
)
def test_user_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlra kv-table: error:") and "\n" not in err
    assert "Traceback" not in err


def test_console_script_runs_and_reports_errors():
    ok = subprocess.run([sys.executable, "-m", "mlra.cli", "kv-table"], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "mlra_4" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mlra.cli", "kv-table", "--model", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "valid variants" in bad.stderr


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mlra.cli", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "kv-table" in out.stdout
