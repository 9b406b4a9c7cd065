"""Index ranges that say which part of a full-model tensor a tensor-parallel rank holds.

Dependency-free on purpose: the attention families describe their own tensor-parallel split
with these (``mlra.attention``), and the plans (``mlra.parallel.plans``) and shard loaders
apply them, without either importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass

Ranges = tuple[tuple[int, int], ...]
"""Half-open index ranges ``((start, stop), ...)`` along one dimension, taken in order."""


@dataclass(frozen=True)
class TensorSlice:
    """Which part of a full-model tensor a rank holds.

    ``dims`` maps a dimension to the ranges taken along it (in order; the pieces are
    concatenated); dimensions not listed are taken whole. ``pad`` = (dim, size) zero-pads the
    result along ``dim`` to ``size`` (the vocabulary padding of the last rank).
    """

    dims: tuple[tuple[int, Ranges], ...]
    pad: tuple[int, int] | None = None

    def shape(self, full_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the slice of a tensor of ``full_shape``."""
        shape = list(full_shape)
        for dim, ranges in self.dims:
            shape[dim] = sum(b - a for a, b in ranges)
        if self.pad is not None:
            shape[self.pad[0]] = self.pad[1]
        return tuple(shape)


def rows(dim: int, start: int, stop: int) -> TensorSlice:
    """One contiguous range ``[start, stop)`` along ``dim``."""
    return TensorSlice(((dim, ((start, stop),)),))


def merge(ranges: list[tuple[int, int]]) -> Ranges:
    """Merge adjacent ranges (keeps order)."""
    merged: list[tuple[int, int]] = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return tuple(merged)


def even_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """The ``index``-th of ``parts`` near-equal contiguous pieces of range(n)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, ascending."""
    return [k for k in range(1, n + 1) if n % k == 0]
