"""The split-KV wave model (``choose_num_splits``): its choices on the H200's 132
multiprocessors for the batch-1 shapes that were measured (``benchmarks/decode/results/h200/
next_2026-12-03``)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("triton")

from mlra.kernels._triton_common import choose_num_splits  # noqa: E402


@pytest.mark.parametrize("length", [2048, 8192, 8192 + 256, 131072, 1 << 20])
@pytest.mark.parametrize("min_tiles", [1, 2, 4])
def test_each_split_keeps_the_tiles_a_pipeline_needs(length, min_tiles):
    tiles = math.ceil(length / 64)
    s = choose_num_splits(4, length, 64, 132, ctas_per_sm=2, min_split_tiles=min_tiles)
    assert 1 <= s <= tiles
    assert tiles // s >= min_tiles


def test_mlra4_at_8k_no_longer_splits_into_two_tile_pieces():
    # MLRA-4 at 2.9B, batch 1: four 128-wide streams, 5-stage pipeline, two programs per SM
    assert choose_num_splits(4, 8192, 64, 132, ctas_per_sm=2) == 64  # the old choice
    assert choose_num_splits(4, 8192, 64, 132, ctas_per_sm=2, min_split_tiles=4) == 32
    # long contexts are not limited by it: the same choice as without the floor
    assert choose_num_splits(4, 131072, 64, 132, ctas_per_sm=2, min_split_tiles=4) == 64


def test_a_two_stage_pipeline_keeps_its_splits():
    # MLA at 2.9B, batch 1 (one 512-wide stream, 2 stages): 128 splits measured best at 8K
    assert choose_num_splits(1, 8192, 64, 132, ctas_per_sm=1, min_split_tiles=1) == 128
