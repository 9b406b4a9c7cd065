"""The paged KV cache: per-variant layouts, page allocation, slots, gathers, sizes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

import mlra
from mlra.attention import build_attention
from mlra.cache import CacheFullError, CacheLayout, PagedKVCache
from mlra.kv_accounting import kv_elements_total
from mlra.layers import Rotary


def test_layout_matches_kv_accounting_for_every_variant(variant):
    # what the cache stores per token per layer is exactly the paper's per-token cache
    for size in ("tiny", "paper"):
        cfg = mlra.ModelConfig.preset(variant, size=size)
        assert CacheLayout.from_config(cfg).elements_per_token == kv_elements_total(cfg)


def test_paper_latent_rows_are_latent_heads_then_rope():
    layout = CacheLayout.from_config(mlra.ModelConfig.preset("mlra_4"))
    assert layout.pools == (("rows", (512 + 64,)),)
    assert layout.latent_offsets == (0, 128, 256, 384) and layout.rope_offset == 512
    mla = CacheLayout.from_config(mlra.ModelConfig.preset("mla"))
    assert mla.latent_offsets == (0,) and mla.rope_offset == 512
    gta = CacheLayout.from_config(mlra.ModelConfig.preset("gta"))
    assert gta.pools == (("rows", (6 * 128 + 64,)),)  # compact rows, not K and V
    assert gta.latent_offsets == tuple(range(0, 6 * 128, 128)) and gta.rope_offset == 768
    tpa = CacheLayout.from_config(mlra.ModelConfig.preset("tpa"))
    assert dict(tpa.pools) == {"a_k": (24, 2), "b_k": (2, 128), "a_v": (24, 2), "b_v": (2, 128)}


def test_pack_unpack_roundtrip_of_every_kv_state(variant):
    cfg = tiny_config(variant)
    attn = build_attention(cfg)
    attn.reset_parameters()
    x = torch.randn(2, 5, cfg.d_model)
    state = attn.kv_state(x, Rotary(torch.arange(5).expand(2, 5)))
    layout = CacheLayout.from_config(cfg)
    packed = layout.pack(state)
    assert {k: tuple(v.shape[2:]) for k, v in packed.items()} == dict(layout.pools)
    back = layout.unpack(packed)
    assert back.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(back[k], state[k], rtol=0, atol=0)


def test_tensor_parallel_shard_config_sizes_the_cache():
    full = tiny_config("mlra_4")
    shard = mlra.ModelConfig(**{**full.to_dict(), "kv_lora_rank": full.latent_head_dim,
                                "latent_branches": 1, "output_scale": 0.5})
    a = PagedKVCache(full, num_pages=4, page_size=8)
    b = PagedKVCache(shard, num_pages=4, page_size=8)
    w, r = full.latent_head_dim, full.rope_dim
    assert b.layout.pools == (("rows", (w + r,)),)
    assert a.bytes_per_token() == 4 * full.n_layers * (4 * w + r)
    assert b.bytes_per_token() == 4 * full.n_layers * (w + r)
    assert b.bytes_allocated() == b.bytes_per_token() * 4 * 8


def test_allocation_reuse_and_all_or_nothing():
    cache = PagedKVCache(tiny_config("gqa"), num_pages=5, page_size=4)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.extend([a, b], [6, 3])  # a: 2 pages, b: 1 page
    assert cache.pages(a) == [0, 1] and cache.pages(b) == [2]
    assert cache.page_count(a) == 2 and cache.page_count(b) == 1
    assert cache.length(a) == 6 and cache.num_free_pages == 2
    with pytest.raises(CacheFullError, match="4 more pages"):
        cache.reserve([a, b], [7, 6])  # a needs 2 more pages, b 2 more: 4 > 2 free
    assert cache.num_free_pages == 2 and cache.pages(a) == [0, 1]  # nothing taken
    cache.extend([b], [1])  # fits in b's page
    assert cache.pages(b) == [2]
    cache.free(a)
    c = cache.add_sequence()
    cache.extend([c], [5])
    assert cache.pages(c) == [0, 1]  # freed pages are reused first
    table = cache.block_table([b, c])
    assert table.dtype == torch.int32 and table.tolist() == [[2, 0], [0, 1]]
    assert cache.seq_lens([b, c]).tolist() == [4, 5]
    assert cache.block_table([b], width=3).tolist() == [[2, 0, 0]]
    cache.reset()
    assert cache.num_free_pages == 5 and cache.sequences == []


def test_slots_write_and_gather_interleaved_sequences():
    cfg = tiny_config("mla")
    cache = PagedKVCache(cfg, num_pages=8, page_size=4, fill_value=float("nan"))
    a, b = cache.add_sequence(), cache.add_sequence()
    row = cache.layout.pools[0][1][0]
    data = {a: torch.randn(7, row), b: torch.randn(5, row)}
    for chunk in ((0, 3), (3, 7)):  # interleave the two sequences' growth
        for s, n_max in ((a, 7), (b, 5)):
            lo, hi = chunk[0], min(chunk[1], n_max)
            if hi <= lo:
                continue
            slots = cache.append([s], [hi - lo])
            assert slots.tolist() == [cache.slot(s, p) for p in range(lo, hi)]
            cache.write(0, slots, cache.layout.unpack({"rows": data[s][lo:hi]}))
    assert cache.pages(a) != sorted(cache.pages(a) + cache.pages(b))[:2]  # really interleaved
    got = cache.gather(0, [a, b])
    rows = cache.layout.pack(got)["rows"]
    torch.testing.assert_close(rows[0], data[a], rtol=0, atol=0)
    torch.testing.assert_close(rows[1, :5], data[b], rtol=0, atol=0)
    assert torch.equal(rows[1, 5:], torch.zeros(2, row))  # NaN in the page never leaks out


def test_for_model_takes_dtype_and_rounds_to_pages():
    model = mlra.Transformer(tiny_config("mlra_2")).to(torch.bfloat16)
    cache = PagedKVCache.for_model(model, max_tokens=100, page_size=16)
    assert cache.dtype == torch.bfloat16 and cache.num_pages == math.ceil(100 / 16)
    assert cache.pools[0]["rows"].shape == (7, 16, 128 + 16)
    with pytest.raises(ValueError):
        PagedKVCache(tiny_config("mla"), num_pages=0)


def test_truncate_undoes_an_extend_exactly():
    cache = PagedKVCache(tiny_config("mlra_4"), num_pages=6, page_size=4)
    s = cache.add_sequence()
    cache.extend([s], [3])
    free_before, pages_before = list(cache._free), cache.pages(s)
    cache.extend([s], [6])  # claims two more pages
    assert cache.length(s) == 9 and len(cache.pages(s)) == 3
    cache.truncate(s, 3, len(pages_before))
    assert cache.length(s) == 3 and cache.pages(s) == pages_before
    assert cache._free == free_before  # the same pages come back first, in the same order
    cache.truncate(s, 0)
    assert cache.length(s) == 0 and cache.pages(s) == []
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(s, 1)
