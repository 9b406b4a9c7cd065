"""The next-reads hint (:class:`mlra.kernels.hints.NextReads`): its checks, and when the MLP
offers one (CPU; the kernels' use of it: ``test_gluon_skinny.py``)."""

import pytest
import torch

from mlra import kernels
from mlra.kernels.hints import NextReads


def _mats(n=3, rows=10, width=16):
    return tuple(torch.zeros(rows, width, dtype=torch.bfloat16) for _ in range(n))


def test_rows_and_width_come_from_the_matrices():
    hint = NextReads(_mats(2), parts=3, units=2)
    assert (hint.rows, hint.width, len(hint.mats), hint.range_rows) == (10, 16, 2, 10)
    assert NextReads(_mats(2), parts=3, units=2, ranged=7).range_rows == 7


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


@pytest.mark.parametrize("ranged", [0, 11])
def test_ranges_past_the_rows_are_refused(ranged):
    with pytest.raises(ValueError, match="ranged"):
        NextReads(_mats(1), 2, 1, ranged=ranged)


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


def test_the_resident_kernel_is_given_the_ranged_rows():
    from mlra.kernels.gluon_skinny import _next_args

    args = _next_args(NextReads(_mats(3), parts=4, units=2, ranged=7))
    assert (args["NX_ROWS"], args["NX_PARTS"], args["NX_UNITS"], args["NUM_NX"]) == (7, 4, 2, 3)
