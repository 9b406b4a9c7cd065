"""The run directory of ``mlra train``: atomic checkpoint directories, ``OUT/latest``,
keep-last-N, resolution of a run directory to its newest complete checkpoint, and the lock
that keeps a second writer out.

Layout of a run directory::

    OUT/
      latest                       "checkpoints/step_000200" -- newest COMPLETE checkpoint
      checkpoints/step_000200/
        config.json                model config + weights checksum (mlra.checkpoints.format)
        model.safetensors          weights
        tokenizer.json             the tokenizer the data was made with
        trainer.safetensors        AdamW moments and step counts (keyed by parameter name), RNG
        trainer_state.json         step, data position, run config, optimizer hyper-parameters,
                                   checksums of the other four files
      .lock                        held (flock) by the process writing the run

A checkpoint is written into ``checkpoints/.tmp-step_XXXXXX-*`` (every file fsync'ed), renamed
to ``step_XXXXXX`` (atomic), then ``latest`` is replaced atomically. A run killed at any moment
therefore leaves ``latest`` naming a complete checkpoint -- except while a checkpoint of the
same step is re-written after a resume: its old copy is moved aside (``.old-step_XXXXXX-*``)
for the rename, and a kill at that moment is repaired by :func:`resolve_checkpoint` and
:func:`clean_partial`, which move it back. No pickles: tensors are safetensors,
everything else JSON. Every file's checksum is recorded and verified on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mlra.atomic import atomic_write, atomic_write_text, fs_error, fsync_dir, make_dirs
from mlra.checkpoints.format import CONFIG_FILE, WEIGHTS_FILE
from mlra.checkpoints.integrity import checksums, verify_files
from mlra.errors import CheckpointError, CheckpointWarning, RunInUseError

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
LATEST = "latest"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_STATE = "trainer_state.json"
TOKENIZER_FILE = "tokenizer.json"
_CHECKSUMMED = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, TRAINER_TENSORS)
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _is_complete(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / TRAINER_STATE).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and child.is_dir() and _is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory holding a checkpoint (``RUN/checkpoints/step_N`` -> ``RUN``); any
    other path is its own run directory."""
    path = Path(checkpoint)
    if path.parent.name == CHECKPOINTS:
        return path.parent.parent
    return path


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a training run (a ``latest`` file or a checkpoint)."""
    run_dir = Path(run_dir)
    return (run_dir / LATEST).exists() or bool(list_checkpoints(run_dir))


def resolve_checkpoint(path: str | Path) -> Path:
    """Map ``path`` to a checkpoint/model directory.

    A directory holding ``config.json`` (a checkpoint or a saved model) is returned as is; a
    run directory maps to the checkpoint named by its ``latest`` file, or failing that (no
    ``latest``, or it names a missing/incomplete directory) to its newest complete
    ``checkpoints/step_*``. Falling back to an older checkpoint than the newest one the run
    holds warns (:class:`~mlra.errors.CheckpointWarning`) naming both. Raises
    :class:`CheckpointError` when nothing usable is found.

    If ``latest`` names a missing ``step_N`` whose previous copy survives as
    ``.old-step_N-*`` (a run killed between the two renames of a re-write), that copy is first
    moved back to ``step_N``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist")
    if (p / CONFIG_FILE).is_file():
        return p
    latest = p / LATEST
    broken, wanted = None, None
    if latest.is_file():
        target = p / latest.read_text().strip()
        if not target.exists() and target.parent.name == CHECKPOINTS:
            _restore_backup(target)  # a run killed while re-writing this checkpoint
        if (target / CONFIG_FILE).is_file():
            return target
        wanted = target
        broken = f"{latest} names {target}, which is not a complete checkpoint"
    found = list_checkpoints(p)
    if found:
        chosen = found[-1][1]
        newer = [d for d in _step_dirs(p) if d[0] > found[-1][0]]
        if wanted is None and newer:
            wanted = newer[-1][1]
        if wanted is not None:
            warnings.warn(
                f"{wanted} is incomplete ({_missing(wanted)}); using the older checkpoint "
                f"{chosen}", CheckpointWarning, stacklevel=2,
            )
        return chosen
    if broken:
        raise CheckpointError(broken)
    raise CheckpointError(
        f"{p} is neither a checkpoint/model directory (no {CONFIG_FILE}) nor a training run "
        f"directory (no {LATEST} file or {CHECKPOINTS}/step_* inside)"
    )


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoints/step_*`` directory, complete or not, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    dirs = [(int(m.group(1)), c) for c in root.iterdir()
            if (m := _STEP_RE.match(c.name)) and c.is_dir()]
    return sorted(dirs)


def _missing(directory: Path) -> str:
    if not directory.exists():
        return "it does not exist"
    absent = [n for n in (CONFIG_FILE, TRAINER_STATE) if not (directory / n).is_file()]
    return f"{', '.join(absent)} missing" if absent else "unreadable"


def _fsync_tree(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(directory)


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    write_model: Any,
    tokenizer: Any,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    keep_last: int | None = None,
) -> Path:
    """Write a complete checkpoint of ``step`` atomically and point ``latest`` at it.

    ``write_model(directory)`` writes ``config.json`` + ``model.safetensors`` (e.g.
    :func:`mlra.checkpoints.format.save_model`); ``tokenizer.save(directory)`` the tokenizer;
    ``state`` goes to ``trainer_state.json`` and ``tensors`` to ``trainer.safetensors``. Then
    all but the ``keep_last`` newest checkpoints up to this one are deleted (None keeps all).
    """
    run_dir = Path(run_dir)
    root = make_dirs(run_dir / CHECKPOINTS)
    name = step_dir_name(step)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    final = root / name
    try:
        tmp.mkdir()
        write_model(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(tmp / TRAINER_TENSORS, lambda p: save_file(flat, str(p)))
        # trainer_state.json last, with the other files' checksums: its presence marks the
        # directory complete.
        state = {**state, "checksums": checksums(tmp, list(_CHECKSUMMED))}
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(state, indent=1) + "\n")
        _fsync_tree(tmp)
        old = None
        if final.exists():  # re-written after resuming from an earlier step
            old = root / f".old-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = fs_error(exc, tmp, "write checkpoint") if isinstance(exc, Exception) else None
        if error is None:
            raise
        raise error from exc
    atomic_write_text(run_dir / LATEST, f"{CHECKPOINTS}/{name}\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep_last is not None:
        prune(run_dir, keep_last, upto=step)
    return final


def prune(run_dir: str | Path, keep_last: int, upto: int) -> None:
    """Delete complete checkpoints at or before step ``upto`` except the ``keep_last`` newest
    (checkpoints after ``upto`` -- from an abandoned continuation -- are left alone)."""
    keep_last = max(1, keep_last)
    older = [(s, p) for s, p in list_checkpoints(run_dir) if s <= upto]
    for _, path in older[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


_OLD_RE = re.compile(r"^\.old-(step_\d+)-[0-9a-f]+$")


def _restore_backup(final: Path) -> bool:
    """Move a complete ``.old-<name>-*`` backup of the missing checkpoint ``final`` back to
    ``final``. Safe when several processes race (the losers' renames fail harmlessly) and on
    read-only storage (nothing happens). True if ``final`` is complete afterwards."""
    root = final.parent
    try:
        backups = sorted(root.glob(f".old-{final.name}-*"))
    except OSError:
        return False
    for backup in backups:
        if final.exists():
            break
        if backup.is_dir() and _is_complete(backup):
            try:
                os.replace(backup, final)
                fsync_dir(root)
            except OSError:
                pass
    return final.is_dir() and _is_complete(final)


def clean_partial(run_dir: str | Path) -> None:
    """Tidy up after a run killed while writing a checkpoint: a checkpoint whose re-write was
    interrupted between its two renames (``step_N`` missing, its previous copy still under
    ``.old-step_N-*``) is restored; other temporary and backup directories are removed."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        m = _OLD_RE.match(child.name)
        if m and child.is_dir() and not (root / m.group(1)).exists():
            _restore_backup(root / m.group(1))
    for child in root.iterdir():
        if child.name.startswith((".tmp-", ".old-")) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def read_trainer_state(
    directory: str | Path, verify: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``trainer_state.json`` and ``trainer.safetensors`` of a checkpoint; with ``verify``,
    every file of the checkpoint is first checked against the checksums the state records."""
    directory = Path(directory)
    state_path, tensor_path = directory / TRAINER_STATE, directory / TRAINER_TENSORS
    for p in (state_path, tensor_path):
        if not p.is_file():
            raise CheckpointError(
                f"{p} is missing: {directory} is not a training checkpoint that can be resumed"
            )
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_path} is not valid JSON: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} does not hold a JSON object")
    if verify and state.get("checksums"):
        verify_files(directory, state["checksums"], str(state_path))
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{tensor_path} is corrupt or truncated: {exc}") from exc
    return state, tensors


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory: ``RUN/.lock``, held with ``fcntl.flock`` for as
    long as the process writes to the run (use as a context manager, or :meth:`acquire` /
    :meth:`release`). The kernel drops the lock when the process dies, so a lock left by a
    killed process never blocks; the file only records the holder's pid for the message a
    second writer gets (:class:`~mlra.errors.RunInUseError`). Where ``fcntl`` does not exist
    (Windows) the lock is a no-op."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        make_dirs(self.run_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            error = fs_error(exc, self.path, "create the lock file")
            if error is None:
                raise
            raise error from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"{self.run_dir} is in use: another mlra process (pid {holder}) is writing to "
                "it; wait for it to finish, stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
