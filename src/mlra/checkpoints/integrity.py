"""Checksums of checkpoint files: written with each file, verified before it is trusted.

A checksum is ``"sha256:<hex>"`` (SHA-256 runs at about the speed a disk reads on CPUs with
SHA extensions; the measured cost is in the README). Files written by an older version carry no
checksum and are loaded as before; official checkpoints carry none either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from mlra.atomic import fs_error
from mlra.errors import CheckpointError

ALGORITHM = "sha256"
_CHUNK = 1 << 22


def file_checksum(path: str | Path) -> str:
    """``"sha256:<hex digest>"`` of the file at ``path``."""
    h = hashlib.new(ALGORITHM)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    except OSError as exc:
        error = fs_error(exc, path, "read")
        if error is None:
            raise
        raise error from exc
    return f"{ALGORITHM}:{h.hexdigest()}"


def checksums(directory: str | Path, names: list[str]) -> dict[str, str]:
    """``{name: checksum}`` of the files ``names`` inside ``directory`` that exist."""
    directory = Path(directory)
    return {n: file_checksum(directory / n) for n in names if (directory / n).is_file()}


def verify_files(directory: str | Path, expected: Mapping[str, str], source: str) -> None:
    """Raise :class:`CheckpointError` naming the first file of ``expected`` (relative to
    ``directory``) that is missing or whose content does not match its checksum. ``source``
    is the metadata file the checksums come from (named in the message)."""
    directory = Path(directory)
    if not isinstance(expected, Mapping):
        raise CheckpointError(f"{source}: 'checksums' is not a mapping of file names to sums")
    for name, want in expected.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {source})")
        algorithm = str(want).split(":", 1)[0]
        if algorithm != ALGORITHM:
            raise CheckpointError(f"{source}: unknown checksum {want!r} for {name}")
        got = file_checksum(path)
        if got != want:
            raise CheckpointError(
                f"{path} is corrupt: its checksum does not match the one recorded in {source} "
                "(the file changed after it was written: a flipped bit, a partial copy or an "
                "edit); restore it from a good copy, or pass --no-verify / verify=False to load "
                "it anyway"
            )
