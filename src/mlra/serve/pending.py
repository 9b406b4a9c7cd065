"""Tokens sampled on the device whose host copy is still on its way: :class:`PendingTokens`.

The overlapped decode of :class:`~mlra.serve.engine.Engine` launches step ``t + 1`` from the
tokens of step ``t`` while they are still on the device, and reads step ``t``'s tokens on the
host only afterwards. The read must wait for step ``t``'s sample alone, not for the step queued
behind it: the tokens are copied into pinned host memory without blocking and an event marks
the copy's end, so :meth:`PendingTokens.host` waits for that event only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class PendingTokens:
    """One token per request (``tokens`` [batch] int64 on the device) for ``reqs``, in order;
    the host copy is started at construction."""

    def __init__(self, reqs: Sequence[Any], tokens: torch.Tensor) -> None:
        self.reqs = list(reqs)
        self.tokens = tokens
        self.rows = {id(r): i for i, r in enumerate(self.reqs)}
        self._event: torch.cuda.Event | None = None
        if tokens.is_cuda:
            self._copy = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self._copy.copy_(tokens, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._copy = tokens

    def row(self, req: Any) -> int | None:
        """The row of ``req`` (None when it is not one of these requests)."""
        return self.rows.get(id(req))

    def inputs(self, reqs: Sequence[Any]) -> torch.Tensor | None:
        """The next step's input ids ``[len(reqs), 1]`` on the device: these tokens of ``reqs``
        (each one of :attr:`reqs`, in their order); None when one is not."""
        rows = [self.rows.get(id(r)) for r in reqs]
        if any(i is None for i in rows) or rows != sorted(rows):
            return None
        if len(rows) == len(self.reqs):
            return self.tokens[:, None]
        index = torch.tensor(rows, dtype=torch.long).to(self.tokens.device, non_blocking=True)
        return self.tokens.index_select(0, index)[:, None]

    def host(self) -> list[int]:
        """The tokens as ints, once the device has produced them (waits for that alone)."""
        if self._event is not None:
            self._event.synchronize()
        return self._copy.tolist()
