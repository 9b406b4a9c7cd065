"""Pretraining: the trainer, optimizer and schedule, checkpoints, metrics and ``mlra compare``."""

from mlra.checkpoints.runs import list_checkpoints, resolve_checkpoint

__all__ = ["list_checkpoints", "resolve_checkpoint"]
