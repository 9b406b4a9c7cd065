"""Batches of fixed-length windows from token shards, in an order that does not depend on the
number of processes.

The training stream is the concatenation of the shards cut into non-overlapping windows of
``seq_len + 1`` tokens (inputs and next-token targets; consecutive windows share one token,
as in the official loader; a shard's tail shorter than a window is dropped). Windows are
numbered globally; *sample* ``g`` of the run is window ``perm_e[g mod n]`` of epoch
``e = g // n`` where ``perm_e`` is a seeded permutation (or the identity without shuffling).

Optimizer step ``s`` consumes samples ``[s*G, (s+1)*G)`` where ``G = batch_size * grad_accum *
world_size`` is the global batch; rank ``r`` takes, for micro-step ``m``, the ``batch_size``
samples starting at ``s*G + (m*world_size + r)*batch_size``. The loader state is just the number
of samples consumed, so a run can resume on any number of processes as long as the global batch
(and data, sequence length, seed) stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlra.data.shards import check_token_range, read_shard
from mlra.errors import DataError


class WindowedShards:
    """A list of shards viewed as numbered windows of ``seq_len + 1`` tokens."""

    def __init__(self, paths: Sequence[str | Path], seq_len: int, vocab_size: int | None = None):
        if not paths:
            raise DataError("no token shards given")
        self.paths = [Path(p) for p in paths]
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.shards = [read_shard(p) for p in self.paths]
        counts = [max(0, (s.size - 1) // seq_len) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_windows = int(self.offsets[-1])
        if self.n_windows == 0:
            total = sum(s.size for s in self.shards)
            raise DataError(
                f"{self.paths[0]}{' ...' if len(self.paths) > 1 else ''}: {total} tokens are "
                f"fewer than one window of seq_len + 1 = {seq_len + 1} tokens; use more data or "
                "a shorter --seq-len"
            )

    @property
    def n_tokens(self) -> int:
        return sum(int(s.size) for s in self.shards)

    def window(self, index: int) -> np.ndarray:
        """Tokens of window ``index``: ``seq_len + 1`` ids."""
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        start = (index - int(self.offsets[shard])) * self.seq_len
        tokens = self.shards[shard][start:start + self.seq_len + 1]
        if self.vocab_size is not None:
            check_token_range(tokens, self.vocab_size, str(self.paths[shard]), start)
        return tokens

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``[len(indices), seq_len]`` (int64)."""
        rows = np.stack([self.window(int(i)) for i in indices]).astype(np.int64)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]


@dataclass
class Layout:
    """How a global batch is split: per-process micro-batch, accumulation, processes."""

    batch_size: int
    grad_accum: int = 1
    world_size: int = 1
    rank: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size


class TrainLoader:
    """The training sample order (see the module docstring); state = samples consumed."""

    def __init__(self, data: WindowedShards, layout: Layout, seed: int = 0, shuffle: bool = True):
        self.data = data
        self.layout = layout
        self.seed = seed
        self.shuffle = shuffle
        self.samples = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _window_of(self, sample: int) -> int:
        n = self.data.n_windows
        epoch, i = divmod(sample, n)
        if not self.shuffle:
            return i
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(n)
            self._perm_epoch = epoch
        assert self._perm is not None
        return int(self._perm[i])

    @property
    def epoch(self) -> float:
        return self.samples / self.data.n_windows

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process's micro-batches of the next optimizer step; advances the position."""
        lay = self.layout
        start = self.samples
        micro = []
        for m in range(lay.grad_accum):
            first = start + (m * lay.world_size + lay.rank) * lay.batch_size
            micro.append(self.data.batch(
                [self._window_of(first + j) for j in range(lay.batch_size)]
            ))
        self.samples += lay.global_batch
        return micro

    def state_dict(self) -> dict:
        return {"samples": self.samples, "seed": self.seed, "shuffle": self.shuffle,
                "seq_len": self.data.seq_len, "n_windows": self.data.n_windows,
                "global_batch": self.layout.global_batch}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the data, sequence length, seed and shuffling must match."""
        current = {"seq_len": self.data.seq_len, "n_windows": self.data.n_windows,
                   "seed": self.seed, "shuffle": self.shuffle}
        for key, value in current.items():
            if state.get(key) != value:
                raise DataError(
                    f"cannot resume: the checkpoint's data {key} is {state.get(key)!r}, this "
                    f"run's is {value!r} (resume needs the same shards, --seq-len, --seed and "
                    "shuffling)"
                )
        self.samples = int(state["samples"])


def validation_windows(data: WindowedShards, max_tokens: int) -> int:
    """Number of windows of the fixed validation slice: the first ``max_tokens`` tokens."""
    return max(1, min(data.n_windows, max_tokens // data.seq_len))


def validation_batches(
    data: WindowedShards, n_windows: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """This rank's share of the fixed validation slice (windows ``rank::world_size`` of the
    first ``n_windows``), as ``(inputs, targets, n_real)`` batches. Every rank gets the same
    number of batches (sharded models need every rank in every forward); padding rows repeat a
    real window and are excluded by ``n_real``."""
    mine = list(range(rank, n_windows, world_size))
    per_rank = -(-n_windows // world_size)
    out = []
    for start in range(0, per_rank, batch_size):
        idx = mine[start:start + batch_size]
        x, y = data.batch(idx + [0] * (batch_size - len(idx)))
        out.append((x, y, len(idx)))
    return out
