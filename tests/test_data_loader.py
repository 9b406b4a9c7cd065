"""Training sample order: windows and targets, independence from the number of processes,
resume position, fixed validation slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlra.data.loader import (
    Layout,
    TrainLoader,
    WindowedShards,
    validation_batches,
    validation_windows,
)
from mlra.data.shards import write_shard
from mlra.errors import DataError


@pytest.fixture
def shards(tmp_path):
    a = write_shard(tmp_path / "train_000000.bin", np.arange(0, 100) % 250)
    b = write_shard(tmp_path / "train_000001.bin", np.arange(100, 141) % 250)
    return [a, b]


def test_windows_and_targets(shards):
    data = WindowedShards(shards, seq_len=8)
    assert data.n_windows == (99 // 8) + (40 // 8)  # 12 + 5; tails dropped
    x, y = data.batch([0, 12, 16])
    assert x.shape == y.shape == (3, 8) and x.dtype == torch.int64
    assert x[0].tolist() == list(range(0, 8)) and y[0].tolist() == list(range(1, 9))
    assert x[1].tolist() == list(range(100, 108))  # first window of the second shard
    assert y[2].tolist() == list(range(133, 141))  # last complete window


def test_out_of_vocabulary_window_is_reported(tmp_path):
    path = write_shard(tmp_path / "s.bin", [1, 2, 3, 999, 5, 6, 7, 8, 9])
    data = WindowedShards([path], seq_len=4, vocab_size=257)
    with pytest.raises(DataError, match="token id 999 at position 3"):
        data.batch([0])


def test_too_little_data(tmp_path):
    path = write_shard(tmp_path / "s.bin", [1, 2, 3])
    with pytest.raises(DataError, match="fewer than one window"):
        WindowedShards([path], seq_len=8)


def _step_rows(loader):
    return torch.cat([x for x, _ in loader.next_step()]).tolist()


@pytest.mark.parametrize("shuffle", [False, True])
def test_sample_order_does_not_depend_on_world_size(shards, shuffle):
    data = WindowedShards(shards, seq_len=4)
    single = TrainLoader(data, Layout(batch_size=2, grad_accum=4), seed=3, shuffle=shuffle)
    ranks = [TrainLoader(data, Layout(batch_size=2, grad_accum=2, world_size=2, rank=r), seed=3,
                         shuffle=shuffle) for r in range(2)]
    for _ in range(7):  # crosses an epoch boundary (37 windows, 8 per step)
        expected = sorted(map(tuple, _step_rows(single)))
        got = sorted(map(tuple, _step_rows(ranks[0]) + _step_rows(ranks[1])))
        assert got == expected


def test_shuffled_epochs_cover_every_window_once(shards):
    data = WindowedShards(shards, seq_len=4)
    loader = TrainLoader(data, Layout(batch_size=1), seed=0, shuffle=True)
    firsts = [loader.next_step()[0][0][0, 0].item() for _ in range(data.n_windows)]
    assert sorted(firsts) == sorted(data.batch(range(data.n_windows))[0][:, 0].tolist())
    assert firsts != sorted(firsts)  # actually shuffled
    other = TrainLoader(data, Layout(batch_size=1), seed=1, shuffle=True)
    assert [other.next_step()[0][0][0, 0].item() for _ in range(data.n_windows)] != firsts


def test_resume_position(shards):
    data = WindowedShards(shards, seq_len=4)
    a = TrainLoader(data, Layout(batch_size=3), seed=5)
    for _ in range(4):
        a.next_step()
    state = a.state_dict()
    b = TrainLoader(data, Layout(batch_size=1, grad_accum=3), seed=5)
    b.load_state_dict(state)
    assert _step_rows(a) == _step_rows(b)
    with pytest.raises(DataError, match="seed"):
        TrainLoader(data, Layout(batch_size=3), seed=6).load_state_dict(state)
    with pytest.raises(DataError, match="seq_len"):
        TrainLoader(WindowedShards(shards, seq_len=5), Layout(batch_size=3), seed=5) \
            .load_state_dict(state)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_validation_slice_is_fixed_and_split_across_ranks(shards, world):
    data = WindowedShards(shards, seq_len=4)
    n = validation_windows(data, max_tokens=40)
    assert n == 10
    seen = []
    counts = set()
    for rank in range(world):
        batches = validation_batches(data, n, batch_size=3, rank=rank, world_size=world)
        counts.add(len(batches))
        for x, _, n_real in batches:
            assert x.shape == (3, 4)
            seen += [tuple(r) for r in x[:n_real].tolist()]
    assert len(counts) == 1  # every rank runs the same number of forward passes
    assert sorted(seen) == sorted(map(tuple, data.batch(range(10))[0].tolist()))
