"""Exceptions that mean "the user asked for something wrong" (as opposed to a bug).

The CLI prints these as one line and exits with status 2; library callers can catch them.
"""

from __future__ import annotations


class MlraError(Exception):
    """Base class for user-facing errors: bad input, missing files, impossible requests."""


class ConfigError(MlraError, ValueError):
    """A model or run configuration violates a constraint; the message names the field."""


class DataError(MlraError, ValueError):
    """A data file (token shard, corpus, tokenizer) is missing, corrupt or incompatible."""


class CheckpointError(MlraError, ValueError):
    """A checkpoint is missing, corrupt, unsafe or does not match the model."""


class FileSystemError(MlraError, OSError):
    """A file could not be read or written: no space, read-only file system, permission
    denied, a path that is a file. The message names the path and the cause."""

    def __init__(self, message: str, code: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno = code
        self.filename = path

    def __str__(self) -> str:
        return str(self.args[0])


class MlraWarning(UserWarning):
    """Something the user should know that does not stop the command (printed as one line)."""


class CheckpointWarning(MlraWarning):
    """A checkpoint other than the one asked for is used (e.g. the newest is incomplete)."""


class RunInUseError(MlraError):
    """Another process is writing to the same run directory."""
