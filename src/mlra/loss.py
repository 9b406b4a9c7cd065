"""Next-token cross-entropy, computed in fp32 whatever the logits' dtype.

One function for the trainer, the model's ``labels`` loss and the Hugging Face wrapper, so
they agree to the bit. :func:`compiled_token_cross_entropy` is the same function through
``torch.compile``: the fp32 cast is fused into the log-sum-exp reduction and the gradient is
written straight in the logits' dtype, so no fp32 copy of the ``[tokens, vocab]`` logits (and
none of its gradient) is made; ``mlra train --compile`` uses it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Targets equal to this contribute neither to the loss nor to the count of the mean."""


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                        reduction: str = "mean", ignore_index: int = IGNORE_INDEX
                        ) -> torch.Tensor:
    """Cross-entropy of ``logits [..., vocab]`` against ``targets [...]`` (int64), in fp32.

    ``reduction``: ``"mean"`` over the targets that are not ``ignore_index``, ``"sum"``, or
    ``"none"`` (fp32 per-target losses shaped like ``targets``, 0 where ignored).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} need targets of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


@functools.cache
def compiled_token_cross_entropy() -> Callable[..., torch.Tensor]:
    """:func:`token_cross_entropy` through ``torch.compile``, built once per process and shared
    by its callers: a second shape recompiles once with dynamic shapes; past dynamo's
    recompile limit (many distinct ranks or dtypes in one process) it falls back to eager."""
    return torch.compile(token_cross_entropy)
