"""What the next launch of a decode step reads first, for the launch before it to fetch into
L2 once its own reads are done (a hint: kernels that cannot use it ignore it)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class NextReads:
    """The first ``units`` rows of each of ``parts`` equal row ranges (part ``p`` starts at
    row ``p * ranged // parts``) of up to three matrices of the same shape with contiguous
    rows: what the ``parts`` programs of a weight-streaming launch read first. ``ranged``:
    the leading rows split into those ranges (default all; fewer where the launch hands the
    rest out at run time)."""

    mats: tuple[torch.Tensor, ...]
    parts: int
    units: int
    ranged: int | None = None

    def __post_init__(self):
        if not 1 <= len(self.mats) <= 3:
            raise ValueError(f"NextReads takes one to three matrices, got {len(self.mats)}")
        shape = self.mats[0].shape
        for m in self.mats:
            if m.dim() != 2 or m.shape != shape or m.stride(1) != 1 or m.stride(0) != shape[1]:
                raise ValueError("NextReads matrices must be 2-D, of one shape, contiguous")
        if self.parts < 1 or self.units < 1:
            raise ValueError(f"parts={self.parts}, units={self.units}: both must be >= 1")
        if self.ranged is not None and not 1 <= self.ranged <= shape[0]:
            raise ValueError(f"ranged={self.ranged}: the rows split into ranges must be "
                             f"between 1 and the matrices' {shape[0]} rows")

    @property
    def rows(self) -> int:
        return self.mats[0].shape[0]

    @property
    def range_rows(self) -> int:
        """The leading rows split into the ``parts`` ranges."""
        return self.rows if self.ranged is None else self.ranged

    @property
    def width(self) -> int:
        return self.mats[0].shape[1]
