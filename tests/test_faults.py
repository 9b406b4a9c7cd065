"""Nothing lost, nothing silent: injected faults and bad inputs give one-line errors (exit 2)
naming the path and cause, and leave the previous checkpoint / shards / ``latest`` intact.

File-system faults are injected by patching the writes (tests may run as root, for whom a
read-only ``chmod`` changes nothing) or by pointing at a path that is a file."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model

import mlra
from mlra.atomic import atomic_write_text
from mlra.checkpoints import runs
from mlra.checkpoints.format import CONFIG_FILE, WEIGHTS_FILE, save_model
from mlra.cli import build_parser, main
from mlra.data.prepare import prepare
from mlra.errors import CheckpointError, RunInUseError

pytestmark = pytest.mark.usefixtures("one_thread")

PARAGRAPH = ("Low-rank attention splits the latent into heads, so tensor parallel devices each "
             "hold a part of the cache. Every token looks back at the tokens before it.\n\n")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults-data")
    (root / "text.txt").write_text("".join(f"{i}: {PARAGRAPH}" for i in range(100)))
    prepare([str(root / "text.txt")], root / "shards", "byte", progress=False)
    return root / "shards"


def _train_args(data: Path, out: Path, steps: int = 4, *extra: str) -> list[str]:
    return ["train", "--model", "mla", "--data", str(data), "--out", str(out), "--steps",
            str(steps), "--batch-size", "2", "--seq-len", "32", "--eval-interval", "2",
            "--val-tokens", "128", "--log-interval", "1", "--lr", "3e-3", "--warmup-steps", "1",
            "--no-progress", "--set", "n_layers=1", *extra]


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("faults-run") / "run"
    assert main(_train_args(shards, out)) == 0
    return out


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(runs.LOCK_FILE))
    return dest


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _fail_under(monkeypatch, root: Path, code: int) -> None:
    """Make creating files and directories under ``root`` fail with ``code`` (as a read-only,
    full or forbidden file system would)."""
    root = str(root)
    real_open, real_mkdir = os.open, os.mkdir

    def guarded(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(root):
                raise OSError(code, os.strerror(code), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", guarded(real_open))
    monkeypatch.setattr(os, "mkdir", guarded(real_mkdir))


# ------------------------------------------------------------------------------ 1. one writer
def test_run_lock_names_the_holder_and_a_stale_lock_never_blocks(tmp_path):
    run = tmp_path / "run"
    with runs.RunLock(run):
        with pytest.raises(RunInUseError, match=rf"pid {os.getpid()}\)"):
            runs.RunLock(run).acquire()
    runs.RunLock(run).acquire().release()  # released
    (run / runs.LOCK_FILE).write_text("999999\n")  # left behind by a dead process
    runs.RunLock(run).acquire().release()


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run / runs.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid())\n"
         "print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"pid {holder.pid}\)"):
            runs.RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    runs.RunLock(run).acquire().release()


def test_second_writer_is_refused_for_train_resume_and_compare(trained, shards, tmp_path,
                                                               capsys):
    run = _copy_run(trained, tmp_path / "run")
    before = (run / "metrics.jsonl").read_text()
    with runs.RunLock(run):
        assert main(_train_args(shards, run, 6, "--overwrite")) == 2
        _one_line_error(capsys, "is in use", f"pid {os.getpid()}")
        assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 2
        _one_line_error(capsys, "is in use", f"pid {os.getpid()}")
    assert (run / "metrics.jsonl").read_text() == before  # nothing written by the refused runs
    cmp = tmp_path / "cmp"
    with runs.RunLock(cmp):
        assert main(["compare", "--variants", "gqa", "--steps", "1", "--out", str(cmp)]) == 2
        _one_line_error(capsys, "is in use")


# ------------------------------------------------------------------- 2. file-system faults
def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(trained, tmp_path, capsys,
                                                                 monkeypatch):
    from safetensors import SafetensorError

    run = _copy_run(trained, tmp_path / "run")
    latest = (run / runs.LATEST).read_text()

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                              'StorageFull, message: "No space left on device" })')

    monkeypatch.setattr("mlra.checkpoints.format.save_file", full)
    assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 2
    _one_line_error(capsys, "No space left on device", str(run))
    assert (run / runs.LATEST).read_text() == latest
    assert not [p for p in (run / runs.CHECKPOINTS).iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    mlra.load_checkpoint(run)  # the previous checkpoint is intact (checksums verified)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_unwritable_output_is_one_line_for_every_writer(shards, trained, tmp_path, capsys,
                                                        monkeypatch, code):
    cause = os.strerror(code)
    src = tmp_path / "in.txt"
    src.write_text(PARAGRAPH * 20)
    model_dir = save_model(tiny_model("gqa"), tmp_path / "model")
    run = _copy_run(trained, tmp_path / "run")
    latest = (run / runs.LATEST).read_text()
    blocked = tmp_path / "blocked"
    _fail_under(monkeypatch, blocked, code)
    assert main(_train_args(shards, blocked / "new")) == 2
    _one_line_error(capsys, cause, str(blocked))
    assert main(["data", "prepare", str(src), "--out", str(blocked / "d"), "--no-progress"]) == 2
    _one_line_error(capsys, cause, str(blocked))
    assert main(["convert", str(model_dir), "--out", str(blocked / "c")]) == 2
    _one_line_error(capsys, cause, str(blocked))
    _fail_under(monkeypatch, run, code)  # resuming in place into an unwritable run
    assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 2
    _one_line_error(capsys, cause, str(run))
    monkeypatch.undo()
    assert (run / runs.LATEST).read_text() == latest


def test_a_path_that_is_a_file(tmp_path, capsys, shards):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(_train_args(shards, afile / "run")) == 2
    _one_line_error(capsys, "is a file, not a directory", str(afile))
    model_dir = save_model(tiny_model("gqa"), tmp_path / "model")
    assert main(["convert", str(model_dir), "--out", str(afile)]) == 2
    _one_line_error(capsys, "is a file", str(afile))


def test_failed_prepare_keeps_the_previous_shards(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text(PARAGRAPH * 40)
    out = tmp_path / "shards"
    prepare([str(src)], out, "byte", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    src.write_text(PARAGRAPH * 80)

    def full(self, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory))

    monkeypatch.setattr("mlra.data.shards.ShardWriter._flush", full)
    assert main(["data", "prepare", str(src), "--out", str(out), "--overwrite",
                 "--no-progress"]) == 2
    _one_line_error(capsys, "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_files_are_created_with_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        directory = save_model(tiny_model("gqa"), tmp_path / "m")
        prepare([str(_text(tmp_path))], tmp_path / "d", "byte", progress=False)
    finally:
        os.umask(old)
    for path in [tmp_path / "a.json", directory / CONFIG_FILE, directory / WEIGHTS_FILE,
                 *(tmp_path / "d").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "t.txt"
    path.write_text(PARAGRAPH * 30)
    return path


# ------------------------------------------------------------------------- 3. checksums
def test_flipped_byte_in_weights_is_refused_by_name(tmp_path, capsys):
    directory = save_model(tiny_model("mla"), tmp_path / "m")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    assert meta["checksums"][WEIGHTS_FILE].startswith("sha256:")
    _flip_last_byte(directory / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_FILE} is corrupt: its checksum"):
        mlra.load_checkpoint(directory)
    mlra.load_checkpoint(directory, verify=False)  # the flag skips the check
    assert main(["generate", "--checkpoint", str(directory), "--ids", "1,2", "--device",
                 "cpu"]) == 2
    _one_line_error(capsys, WEIGHTS_FILE, "corrupt")
    assert main(["generate", "--checkpoint", str(directory), "--ids", "1,2", "--device", "cpu",
                 "--max-new-tokens", "2", "--no-verify"]) == 0


def test_resume_verifies_every_file_of_the_checkpoint(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path / "run")
    step = runs.resolve_checkpoint(run)
    state = json.loads((step / runs.TRAINER_STATE).read_text())
    assert set(state["checksums"]) == {CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json",
                                       runs.TRAINER_TENSORS}
    _flip_last_byte(step / runs.TRAINER_TENSORS)
    assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 2
    _one_line_error(capsys, str(step / runs.TRAINER_TENSORS), "corrupt")


# --------------------------------------------------------------------- 4. no silent fallback
def test_fallback_to_an_older_checkpoint_warns_and_final_line_is_honest(trained, tmp_path,
                                                                         capsys):
    run = _copy_run(trained, tmp_path / "run")
    newest = run / runs.CHECKPOINTS / "step_000004"
    (newest / CONFIG_FILE).unlink()
    older = run / runs.CHECKPOINTS / "step_000002"
    assert main(["generate", "--checkpoint", str(run), "--ids", "1,2", "--device", "cpu",
                 "--max-new-tokens", "1"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {newest} is incomplete (config.json missing); using the older " \
           f"checkpoint {older}" in err
    assert main(["train", "--out", str(run), "--resume", "--steps", "5",
                 "--eval-interval", "0"]) == 0
    err = capsys.readouterr().err
    assert f"{newest} is incomplete" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("done: step 5; no validation loss measured at step 5 (the last"), last
    assert "is of step 2" in last


def test_final_line_reports_the_loss_of_its_own_step(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path / "run")
    assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("done: step 6; validation loss "), last


def test_status_lines_without_a_progress_bar(shards, tmp_path, monkeypatch):
    from mlra.train.config import TrainConfig
    from mlra.train.trainer import Trainer, train

    monkeypatch.setattr(Trainer, "status_interval_s", 0.0)
    lines: list[str] = []
    cfg = TrainConfig(model="mla", data=str(shards), out=str(tmp_path / "r"), steps=4,
                      batch_size=2, seq_len=32, eval_interval=0, log_interval=4, progress=False,
                      model_overrides={"n_layers": 1})
    train(cfg, log=lines.append)
    status = [ln for ln in lines if ln.startswith("step ") and "/4: loss" in ln]
    assert [ln.split(":")[0] for ln in status] == ["step 2/4", "step 3/4", "step 4/4"]


# --------------------------------------------------------------------- 5. input never changed
def test_invalid_utf8_is_refused_with_its_offset_or_replaced_with_a_count(tmp_path, capsys):
    head = b"Caf" + b"\xe9 au lait.\n\n"  # latin-1 e-acute at byte offset 3
    src = tmp_path / "latin1.txt"
    src.write_bytes(("ok " * 2000).encode() + b"\n\n" + head * 50)
    offset = 6002 + 3
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2
    _one_line_error(capsys, f"byte offset {offset}", "--encoding", "--errors replace")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "b"), "--no-progress",
                 "--errors", "replace"]) == 0
    assert "50 invalid utf-8 byte(s) were replaced" in capsys.readouterr().out
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "c"), "--no-progress",
                 "--encoding", "latin-1"]) == 0
    tok = mlra.data.load_tokenizer(tmp_path / "c")
    from mlra.data.shards import read_shard

    text = "".join(tok.decode(read_shard(p).tolist()) for p in sorted((tmp_path / "c").glob(
        "*.bin")))
    assert "Café au lait" in text and "\ufffd" not in text


def test_binary_input_is_refused_by_prepare_as_by_train(tmp_path, capsys, shards):
    elf = tmp_path / "tool"
    elf.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64) + b"text" * 100)
    assert main(["data", "prepare", str(elf), "--out", str(tmp_path / "d"),
                 "--no-progress"]) == 2
    _one_line_error(capsys, str(elf), "executable (ELF)", "offset 7")
    assert main(_train_args(elf, tmp_path / "r")) == 2
    _one_line_error(capsys, str(elf))


def test_validation_split_message_names_the_cause(tmp_path, capsys):
    flat = tmp_path / "flat.txt"
    flat.write_text("One long line of text without any paragraph break. " * 4000)
    assert main(["data", "prepare", str(flat), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert "has no paragraph breaks (blank lines)" in capsys.readouterr().out
    small = tmp_path / "small.txt"
    small.write_text(PARAGRAPH * 3)
    assert main(["data", "prepare", str(small), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    assert "the input is too small" in capsys.readouterr().out


# ----------------------------------------------------------- 6. kinds, defaults, help text
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_broken_config_is_named_before_anything_else(tmp_path, capsys, damage):
    from mlra.data.tokenizers import ByteTokenizer

    directory = save_model(tiny_model("gqa"), tmp_path / "m")
    ByteTokenizer().save(directory)
    if damage == "missing":
        (directory / CONFIG_FILE).unlink()
        want = f"{directory / CONFIG_FILE} is missing"
    else:
        (directory / CONFIG_FILE).write_text("{not json")
        want = f"{directory / CONFIG_FILE} is not valid JSON"
    assert main(["generate", "--checkpoint", str(directory), "--prompt", "Hi"]) == 2
    line = _one_line_error(capsys, want)
    assert "GPT-2" not in line


def test_eval_ppl_defaults_to_the_runs_own_validation_shards(trained, shards, capsys):
    assert main(["eval", "ppl", "--checkpoint", str(trained), "--device", "cpu", "--json",
                 "--no-progress", "--block-size", "32"]) == 0
    captured = capsys.readouterr()
    assert "scoring the validation shards of the run" in captured.err
    sets = json.loads(captured.out)["sets"]
    assert [Path(s["path"]).name for s in sets] == ["val_000000.bin"]
    assert main(["eval", "ppl", "--checkpoint", str(trained), "--data", str(shards),
                 "--device", "cpu", "--json", "--no-progress", "--block-size", "32"]) == 0
    captured = capsys.readouterr()
    assert [s["name"] for s in json.loads(captured.out)["sets"]] == ["val_000000"]
    assert "not its 1 training shard(s)" in captured.err
    assert main(["eval", "ppl", "--checkpoint", str(trained), "--data", str(shards),
                 "--all-shards", "--device", "cpu", "--json", "--no-progress",
                 "--block-size", "32"]) == 0
    names = [s["name"] for s in json.loads(capsys.readouterr().out)["sets"]]
    assert names == ["train_000000", "val_000000"]


def _all_parsers(parser, prefix=()):
    import argparse

    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*prefix, name))


def test_every_help_has_examples():
    missing = [" ".join(name) for name, p in _all_parsers(build_parser())
               if "example" not in p.format_help().lower()]
    assert missing == []


def test_readme_python_tour_runs_as_written(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    tour = readme.split("## Python tour", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(tour, "README.md (Python tour)", "exec"), scope)  # noqa: S102
    assert scope["model"].config.name == "mlra_4" and len(scope["new"]) == 2


def test_second_compare_reuses_finished_variants(tmp_path, mlra_cache, capsys):
    argv = ["compare", "--variants", "gqa,mla", "--steps", "1", "--batch-size", "1",
            "--seq-len", "16", "--eval-interval", "1", "--val-tokens", "32", "--workers", "2",
            "--out", str(tmp_path / "c")]  # with progress bars: the case that retrained
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "gqa: reusing" in out and "mla: reusing" in out
    assert not [ln for ln in out.splitlines() if ln.startswith("training ")]
