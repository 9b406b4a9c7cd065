"""Atomic file writes and one-line file-system errors. Standard library only (plus
:mod:`mlra.errors`), so writing a token shard or a JSON file never imports the model.

Every write goes to a temporary name in the same directory, is fsync'ed, then renamed over the
target: a crash leaves either the old file or the new one, never a torn one. The new file gets
the permissions an ordinary ``open(path, "w")`` would give (``0666`` minus the umask), not the
``0600`` of the temporary file. A file-system fault (disk full, read-only file system,
permission denied, a path that is a file) becomes a :class:`~mlra.errors.FileSystemError`
naming the path and the cause; the target keeps its previous content.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlra.errors import FileSystemError

FS_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "EEXIST",
        "EFBIG", "EIO", "ENAMETOOLONG", "EMFILE", "ENFILE", "ENOENT", "ENOTEMPTY", "EBUSY",
        "ETXTBSY", "EXDEV", "ELOOP",
    ) if hasattr(errno, name)
)
"""errno values that are faults of the file system or of the path given, not bugs."""

_RUST_OS_ERROR = re.compile(r"Os \{ code: (\d+)")


def errno_of(exc: BaseException) -> int | None:
    """The errno behind ``exc``: an :class:`OSError`'s own, or the one a Rust I/O error
    (e.g. ``SafetensorError: ... Os { code: 28, ... }``) carries in its message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = _RUST_OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def fs_error(exc: BaseException, path: str | Path, action: str = "write") -> FileSystemError | None:
    """A :class:`FileSystemError` for ``exc`` (``"cannot write PATH: No space left on device"``)
    when ``exc`` is a file-system fault, else None. The path in ``exc`` wins over ``path``."""
    code = errno_of(exc)
    if code not in FS_ERRNOS:
        return None
    where = getattr(exc, "filename", None) or path
    cause = os.strerror(code)
    hint = {
        errno.ENOSPC: "free some space or choose another directory",
        errno.EROFS: "choose a writable directory",
        errno.EACCES: "check the permissions or choose another directory",
        errno.EPERM: "check the permissions or choose another directory",
        errno.ENOTDIR: "a component of the path is a file, not a directory",
    }.get(code)
    message = f"cannot {action} {where}: {cause}"
    return FileSystemError(message + (f" ({hint})" if hint else ""), code, str(where))


def creation_mode() -> int:
    """The mode a new file gets from ``open(path, "w")``: ``0o666`` minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def make_dirs(directory: str | Path) -> Path:
    """``mkdir -p directory``; a file-system fault is a :class:`FileSystemError`."""
    directory = Path(directory)
    for part in (directory, *directory.parents):
        if part.exists() and not part.is_dir():
            raise FileSystemError(f"cannot create directory {directory}: {part} is a file, not a "
                                  "directory", errno.ENOTDIR, str(part))
        if part.is_dir():
            break
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = fs_error(exc, directory, "create directory")
        if error is None:
            raise
        raise error from exc
    return directory


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync, and atomically rename ``tmp_path`` to ``path``.

    On any failure the temporary file is removed and ``path`` is untouched; file-system faults
    (also those a writer library reports in its own exception type) raise
    :class:`FileSystemError` naming ``path``."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        error = fs_error(exc, path)
        if error is None:
            raise
        raise error from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, creation_mode())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except FileSystemError:
        raise
    except Exception as exc:
        error = fs_error(exc, path)
        if error is None:
            raise
        raise error from exc
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda p: p.write_bytes(data))


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
