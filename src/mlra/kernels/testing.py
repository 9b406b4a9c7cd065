"""Random paged caches for kernel tests and benchmarks (no Triton needed).

Pages are scattered through the pool in random order; everything a sequence does not own --
unused pages, rows past its length in its last page, block-table entries past its pages -- is
poisoned (NaN, and out-of-range page ids), so a kernel that reads outside the contract fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

POISON_PAGE = 2**30  # block-table filler past a sequence's pages


def random_page_table(
    seq_lens: Sequence[int], page: int, spare_pages: int = 2, spare_cols: int = 1,
    generator: torch.Generator | None = None, shuffle: bool = True,
) -> tuple[torch.Tensor, int]:
    """A ``[B, max_pages]`` int32 block table assigning disjoint random pages of a pool, and
    the pool's page count. Entries past a sequence's pages hold :data:`POISON_PAGE`."""
    counts = [-(-int(n) // page) for n in seq_lens]
    pool = sum(counts) + spare_pages
    order = torch.randperm(pool, generator=generator) if shuffle else torch.arange(pool)
    width = max(counts + [0]) + spare_cols
    table = torch.full((len(counts), max(width, 1)), POISON_PAGE, dtype=torch.int32)
    i = 0
    for b, c in enumerate(counts):
        table[b, :c] = order[i : i + c].to(torch.int32)
        i += c
    return table, pool


def fill_pages(
    shape_per_token: Sequence[int], seq_lens: Sequence[int], table: torch.Tensor, pool: int,
    page: int, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None, poison: float = float("nan"),
) -> torch.Tensor:
    """A ``[pool, page, *shape_per_token]`` cache: random normal data at every position a
    sequence owns, ``poison`` everywhere else."""
    cache = torch.full((pool, page, *shape_per_token), poison, dtype=dtype, device=device)
    for b, n in enumerate(seq_lens):
        n = int(n)
        for j in range(-(-n // page)):
            rows = min(page, n - j * page)
            data = torch.randn(rows, *shape_per_token, generator=generator)
            cache[int(table[b, j]), :rows] = data.to(dtype).to(device)
    return cache


def random_latent_case(
    seq_lens: Sequence[int], page: int, tq: int, nb: int, hq: int, w: int, r: int = 64,
    layout: str = "latents_first", dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu", seed: int = 0,
) -> dict:
    """Inputs of :func:`mlra.kernels.paged_latent_decode` for a random ragged batch.

    ``layout``: ``latents_first`` is the cache's row ``[latent 0 | ... | rope]``;
    ``rope_first`` puts the RoPE key first and leaves a 16-column gap after every stream (to
    check that offsets are honoured).
    """
    g = torch.Generator().manual_seed(seed)
    table, pool = random_page_table(seq_lens, page, generator=g)
    if layout == "latents_first":
        offsets, rope_off, row = [j * w for j in range(nb)], nb * w, nb * w + r
    elif layout == "rope_first":
        offsets = [r + 16 + j * (w + 16) for j in range(nb)]
        rope_off, row = 0, r + nb * (w + 16) + 16
    else:
        raise ValueError(f"unknown layout {layout!r}")
    cache = fill_pages((row,), seq_lens, table, pool, page, dtype, device, g)
    b = len(seq_lens)
    return dict(
        q_latent=torch.randn(b, tq, nb, hq, w, generator=g).to(dtype).to(device),
        q_rope=torch.randn(b, tq, hq, r, generator=g).to(dtype).to(device),
        cache=cache, block_table=table.to(device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
        latent_offsets=offsets, rope_offset=rope_off, scale=(w + r) ** -0.5,
    )


def random_gqa_case(
    seq_lens: Sequence[int], page: int, tq: int, hq: int, hkv: int, d: int, dv: int,
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu", seed: int = 0,
) -> dict:
    """Inputs of :func:`mlra.kernels.paged_gqa_decode` for a random ragged batch."""
    g = torch.Generator().manual_seed(seed)
    table, pool = random_page_table(seq_lens, page, generator=g)
    k = fill_pages((hkv, d), seq_lens, table, pool, page, dtype, device, g)
    v = fill_pages((hkv, dv), seq_lens, table, pool, page, dtype, device, g)
    return dict(
        q=torch.randn(len(seq_lens), tq, hq, d, generator=g).to(dtype).to(device),
        k_cache=k, v_cache=v, block_table=table.to(device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
        scale=d ** -0.5,
    )


def random_tpa_case(
    seq_lens: Sequence[int], page: int, tq: int, h: int, rank: int, d: int,
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu", seed: int = 0,
) -> dict:
    """Inputs of :func:`mlra.kernels.paged_tpa_decode` for a random ragged batch (TPA's
    scales: logits ``d^-1/2 / rank``, values ``1 / rank``)."""
    g = torch.Generator().manual_seed(seed)
    table, pool = random_page_table(seq_lens, page, generator=g)
    a_k, b_k, a_v, b_v = (fill_pages(shape, seq_lens, table, pool, page, dtype, device, g)
                          for shape in ((h, rank), (rank, d), (h, rank), (rank, d)))
    return dict(
        q=torch.randn(len(seq_lens), tq, h, d, generator=g).to(dtype).to(device),
        a_k=a_k, b_k=b_k, a_v=a_v, b_v=b_v, block_table=table.to(device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
        scale=d ** -0.5 / rank, value_scale=1.0 / rank,
    )

def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 (NaN anywhere gives NaN)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_decode_matches(out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor,
                          ref_lse: torch.Tensor, out_tol: float = 1e-2,
                          lse_tol: float = 2e-3) -> None:
    """Assert a decode kernel's ``out`` / ``lse`` against the reference's: nothing unwritten
    or NaN, ``out`` within ``out_tol`` relative L2 error (bf16 probabilities in ``P @ V`` give
    about 2e-3), the same rows with no visible token (``lse`` = -inf) and the others'
    ``lse`` within ``lse_tol`` absolute."""
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "unwritten or NaN output"
    assert rel_error(out, ref_out) < out_tol
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    if finite.any():
        assert (lse[finite] - ref_lse[finite]).abs().max().item() < lse_tol
