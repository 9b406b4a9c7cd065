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
