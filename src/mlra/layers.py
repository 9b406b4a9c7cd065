"""Building blocks shared by every variant: RMSNorm, SwiGLU MLP and rotate-half RoPE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as in the official code: fp32 statistics, cast back to the input dtype, times
    the (fp32) weight. ``weight`` broadcasts against the last dimension(s) of ``x``."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learned scale (eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """``w_down(silu(w_gate x) * w_up x)``, bias-free."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Rotary:
    """Rotate-half RoPE tables for explicit positions, computed once per forward and per width.

    ``positions`` has shape [batch, time] (any integers, e.g. offsets for decoding or shifted
    positions); angles are computed in float64 (exact for large positions) and applied in
    fp32 (float64 for float64 inputs).
    """

    def __init__(self, positions: torch.Tensor, base: float = 10000.0) -> None:
        if positions.dim() != 2:
            raise ValueError(f"positions must be [batch, time], got shape {tuple(positions.shape)}")
        self.positions = positions
        self.base = base
        self._tables: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(
        self, width: int, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [batch, time, width] for a rotated width ``width``."""
        key = (width, dtype)
        if key not in self._tables:
            inv_freq = rope_inv_freq(width, self.base, self.positions.device)
            self._tables[key] = rope_tables(self.positions, inv_freq, dtype)
        return self._tables[key]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Apply RoPE to ``x`` of shape [batch, time, width] or [batch, time, heads, width]."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = self.tables(x.shape[-1], dtype)
        if x.dim() == 4:
            cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        return apply_rotary(x, cos, sin)


def rope_inv_freq(width: int, base: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``width / 2`` RoPE frequencies ``base ** (-2i / width)`` (float64)."""
    return base ** (-torch.arange(0, width, 2, device=device, dtype=torch.float64) / width)


def rope_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[..., 2 * len(inv_freq)]`` of ``positions``: angles in float64 (exact for
    large positions), rounded to ``dtype``."""
    angles = positions.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin], in the tables' dtype."""
    xf = x.to(cos.dtype)
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
