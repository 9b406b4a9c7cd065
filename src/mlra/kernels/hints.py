"""What the next launch of a decode step reads first, for the launch before it to fetch into
L2 once its own reads are done (a hint: kernels that cannot use it ignore it)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class NextReads:
    """The first ``units`` rows of each of ``parts`` equal row ranges (part ``p`` starts at
    row ``p * rows // parts``) of up to three matrices of the same shape with contiguous
    rows: what the ``parts`` programs of a weight-streaming launch read first."""

    mats: tuple[torch.Tensor, ...]
    parts: int
    units: int

    def __post_init__(self):
        if not 1 <= len(self.mats) <= 3:
            raise ValueError(f"NextReads takes one to three matrices, got {len(self.mats)}")
        shape = self.mats[0].shape
        for m in self.mats:
            if m.dim() != 2 or m.shape != shape or m.stride(1) != 1 or m.stride(0) != shape[1]:
                raise ValueError("NextReads matrices must be 2-D, of one shape, contiguous")
        if self.parts < 1 or self.units < 1:
            raise ValueError(f"parts={self.parts}, units={self.units}: both must be >= 1")

    @property
    def rows(self) -> int:
        return self.mats[0].shape[0]

    @property
    def width(self) -> int:
        return self.mats[0].shape[1]
