"""The next-reads hint (:class:`mlra.kernels.hints.NextReads`): its ranges and checks, and when
the MLP offers one (CPU; the kernels' use of it: ``test_gluon_skinny.py``)."""

import pytest
import torch

from mlra import kernels
from mlra.kernels.hints import NextReads


def _mats(n=3, rows=10, width=16):
    return tuple(torch.zeros(rows, width, dtype=torch.bfloat16) for _ in range(n))


def test_ranges_are_the_first_units_of_each_part_not_past_its_end():
    hint = NextReads(_mats(2), parts=3, units=2)
    assert (hint.rows, hint.width) == (10, 16)
    # parts start at rows 0, 3, 6 (p * 10 // 3); matrix 0 first, then matrix 1
    assert hint.ranges() == [(0, 0, 2), (0, 3, 2), (0, 6, 2), (1, 0, 2), (1, 3, 2), (1, 6, 2)]
    wide = NextReads(_mats(1), parts=3, units=5)
    assert wide.ranges() == [(0, 0, 3), (0, 3, 3), (0, 6, 4)]  # clamped to each part's rows


@pytest.mark.parametrize("mats,parts,units,match", [
    ((), 1, 1, "one to three"),
    (_mats(4), 1, 1, "one to three"),
    ((torch.zeros(10, 16), torch.zeros(10, 8)), 1, 1, "one shape"),
    ((torch.zeros(16, 10).t(),), 1, 1, "contiguous"),
    (_mats(1), 0, 1, ">= 1"),
    (_mats(1), 1, 0, ">= 1"),
])
def test_bad_hints_are_refused(mats, parts, units, match):
    with pytest.raises(ValueError, match=match):
        NextReads(mats, parts, units)


def _mlp(d=64, h=96):
    x = torch.randn(1, d, dtype=torch.bfloat16)
    g = torch.ones(d, dtype=torch.bfloat16)
    w_gate, w_up = (torch.randn(h, d, dtype=torch.bfloat16) for _ in range(2))
    w_down = torch.randn(h, d, dtype=torch.bfloat16).t()  # column-major [d, h]
    return x, g, w_gate, w_up, w_down


def test_the_mlp_offers_no_hint_unless_asked_and_on_a_gpu(monkeypatch):
    monkeypatch.delenv(kernels.MLP_L2_UNITS_ENV, raising=False)
    assert kernels.mlp_next_reads(*_mlp()) is None
    monkeypatch.setenv(kernels.MLP_L2_UNITS_ENV, "4")
    assert kernels.mlp_next_reads(*_mlp()) is None  # CPU tensors: no kernel to hint


def test_a_bad_unit_count_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(kernels.MLP_L2_UNITS_ENV, "four")
    with pytest.raises(ValueError, match=kernels.MLP_L2_UNITS_ENV):
        kernels.mlp_next_reads(*_mlp())
