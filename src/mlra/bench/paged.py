"""Decode-benchmark inputs: a paged cache filled with random data, its pages scattered."""

from __future__ import annotations

import math

import torch

from mlra.cache import PagedKVCache
from mlra.config import ModelConfig


def random_paged_cache(
    cfg: ModelConfig, batch: int, context: int, page: int, dtype: torch.dtype,
    device: torch.device,
) -> tuple[PagedKVCache, torch.Tensor, torch.Tensor]:
    """A cache for ``batch`` sequences of ``context`` cached tokens plus the one being decoded,
    filled with random data (never zeros), pages scattered over the pool as after many
    allocations and frees. Returns (cache, block_table int32 [batch, pages], seq_lens int32)."""
    per_seq = math.ceil((context + 1) / page)
    cache = PagedKVCache(cfg, batch * per_seq, page, dtype=dtype, device=device)
    for pools in cache.pools:
        for t in pools.values():
            t.normal_()
    perm = torch.randperm(batch * per_seq, generator=torch.Generator().manual_seed(0))
    block_table = perm.view(batch, per_seq).to(torch.int32).to(device)
    seq_lens = torch.full((batch,), context + 1, dtype=torch.int32, device=device)
    return cache, block_table, seq_lens
