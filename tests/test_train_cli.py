"""``mlra train`` / ``mlra data`` / ``mlra compare`` from the command line: a newcomer's
prepare -> train -> stop -> resume, config files, and one-line user errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlra.cli import main
from mlra.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "".join(f"Chapter {i}. The latent cache is split into heads across devices.\n\n"
               for i in range(600))


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


SMALL = ["--model", "gqa", "--set", "n_layers=1", "--seq-len", "32", "--batch-size", "2",
         "--eval-interval", "2", "--val-tokens", "128", "--log-interval", "1", "--no-progress"]


def test_prepare_train_stop_resume_on_own_text(tmp_path, capsys):
    src = tmp_path / "mine.txt"
    src.write_text(TEXT)
    code, out, _ = run_cli(capsys, "data", "prepare", str(src), "--out", str(tmp_path / "d"),
                           "--no-progress")
    assert code == 0 and "training tokens" in out
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "d"), "--out", str(run),
                           "--steps", "2", *SMALL)
    assert code == 0 and "done: step 2" in err
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "4",
                           "--no-progress")
    assert code == 0 and "resumed from" in err and "step_000002" in err
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert (run / "latest").read_text().strip() == "checkpoints/step_000004"


def test_train_directly_on_a_text_file_and_config_file(tmp_path, capsys):
    src = tmp_path / "mine.txt"
    src.write_text(TEXT)
    conf = tmp_path / "run.json"
    conf.write_text(json.dumps({"model": "mla", "steps": 5, "model_overrides": {"n_layers": 1}}))
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--config", str(conf), "--data", str(src),
                           "--out", str(run), "--steps", "1", "--seq-len", "32",
                           "--batch-size", "2", "--eval-interval", "1", "--val-tokens", "64",
                           "--no-progress")
    assert code == 0, err
    saved = json.loads((run / "run.json").read_text())
    assert saved["config"]["model"] == "mla" and saved["config"]["steps"] == 1  # CLI wins
    assert saved["model"]["n_layers"] == 1 and (run / "data" / "train_000000.bin").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "nope"], "--model 'nope' is unknown"),
        (["train", "--steps", "0"], "--steps must be a positive integer"),
        (["train", "--set", "d_model"], "--set expects FIELD=VALUE"),
        (["train", "--set", "bogus=1", "--print-config"], "bogus"),
        (["train", "--config", "/nonexistent.json"], "does not exist"),
        (["train", "--data", "/nonexistent/dir"], "does not exist"),
        (["train", "--resume", "/nonexistent/run"], "nothing to resume"),
        (["data", "prepare", "/nonexistent.txt", "--out", "/tmp/x"], "does not exist"),
        (["data", "info", "/nonexistent.bin"], "does not exist"),
        (["compare", "--variants", "mha,nope"], "unknown variant"),
        (["compare", "--steps", "0"], "--steps must be a positive integer"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_corrupt_shard_is_a_user_error(tmp_path, capsys):
    (tmp_path / "train_000000.bin").write_bytes(b"\x01" * 2000)
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), "--tokenizer", "byte",
                           "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and "magic number" in err and "train_000000.bin" in err


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mlra.cli", "train", "--lr", "-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "--lr must be a positive number" in proc.stderr


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_resume_into_another_runs_folder_is_refused(tmp_path, capsys):
    src = tmp_path / "mine.txt"
    src.write_text(TEXT)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for run, seed in ((a, "1"), (b, "2")):
        code, _, err = run_cli(capsys, "train", "--data", str(src), "--out", str(run),
                               "--steps", "2", "--seed", seed, *SMALL)
        assert code == 0, err
    before_a, before_b = _snapshot(a), _snapshot(b)
    # Resuming run a with --out b would prune/overwrite b's checkpoints and metrics.
    code, _, err = run_cli(capsys, "train", "--resume", str(a), "--out", str(b),
                           "--steps", "4", "--no-progress")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "already holds another training run" in lines[0]
    assert _snapshot(b) == before_b
    # Into an empty folder it continues run a there and leaves a as it was.
    code, _, err = run_cli(capsys, "train", "--resume", str(a), "--out", str(c),
                           "--steps", "4", "--no-progress")
    assert code == 0 and "resumed from" in err, err
    assert (c / "latest").read_text().strip() == "checkpoints/step_000004"
    assert _snapshot(a) == before_a
    # --overwrite replaces run b with the continuation of run a.
    code, _, err = run_cli(capsys, "train", "--resume", str(a), "--out", str(b),
                           "--steps", "4", "--overwrite", "--no-progress")
    assert code == 0, err
    assert [s.name for s in sorted((b / "checkpoints").iterdir())] == ["step_000004"]
    rows = read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [3, 4]
