"""Per-program timestamps of the decode-step kernels (:mod:`mlra.kernels.kernel_trace`): the
host bookkeeping on any machine; on a Hopper GPU, traced launches give ordered marks for every
program and the same outputs as untraced ones. (The marks' place in each kernel's PTX is
checked in ``test_pdl.py``.)"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mlra.kernels.kernel_trace import MARKS, KernelTrace, trace_slot

ON_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_slots_follow_launch_order_and_active_block_starts_afresh():
    trace = KernelTrace("cpu", capacity=10)
    with trace.active():
        a = trace.slot("first", 3)
        b = trace.slot("second", 4)
        a.fill_(1)
        b.fill_(2)
        launches = trace.launches()
    assert [(t.name, tuple(t.times.shape)) for t in launches] == [("first", (3, len(MARKS))),
                                                                   ("second", (4, len(MARKS)))]
    assert launches[0].times.eq(1).all() and launches[1].times.eq(2).all()
    with trace.active():
        assert trace.launches() == []
        trace.slot("again", 10)  # the whole buffer is free again
        with pytest.raises(ValueError, match="kernel trace full: 10 programs"):
            trace.slot("one more", 1)


def test_first_and_last_read_one_mark_over_programs():
    trace = KernelTrace("cpu", capacity=4)
    with trace.active():
        rows = trace.slot("k", 2)
        rows.copy_(torch.tensor([[10, 12, 15, 20], [11, 13, 14, 30]]))
        (launch,) = trace.launches()
    assert (launch.first("start"), launch.last("start")) == (10, 11)
    assert (launch.first("wait_done"), launch.last("main_done"), launch.last("end")) == (12, 15, 30)


def test_no_slot_without_an_active_trace_or_for_cpu_tensors():
    x = torch.zeros(1)
    assert trace_slot("k", (4, 2), x) is None
    trace = KernelTrace("cpu", capacity=8)
    with trace.active():
        assert trace_slot("k", (4, 2), x) is None  # CPU tensors: the interpreter, no timer
        assert trace.launches() == []
    assert trace_slot("k", (4, 2), x) is None  # the block has ended


@pytest.mark.skipif(not (ON_HOPPER and HAS_TRITON), reason="needs a Hopper GPU and triton")
def test_traced_launches_mark_every_program_in_order_with_the_same_outputs():
    from mlra.kernels.triton_mlp import swiglu_mlp_triton
    from mlra.kernels.triton_skinny import skinny_linear_triton

    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 1024, device=dev, dtype=dt, generator=gen)
    g = torch.rand(1024, device=dev, dtype=dt, generator=gen) + 0.5
    w = torch.randn(1024, 1024, device=dev, dtype=dt, generator=gen) / 32
    wg, wu = (torch.randn(2048, 1024, device=dev, dtype=dt, generator=gen) / 32
              for _ in range(2))
    wd = (torch.randn(2048, 1024, device=dev, dtype=dt, generator=gen) / 45).t()  # column-major

    def run():
        (y,) = skinny_linear_triton(x, [w], norm_weight=g)
        return y, swiglu_mlp_triton(y, g, 1e-6, wg, wu, wd, residual=y)

    plain = run()
    trace = KernelTrace(dev)
    with trace.active():
        traced = run()
        launches = trace.launches()
    for a, b in zip(plain, traced, strict=True):
        assert torch.equal(a, b)
    assert [t.name for t in launches] in (["skinny", "mlp"],
                                          ["skinny", "mlp_partials", "mlp_sums"])
    for launch in launches:
        t = launch.times
        assert (t > 0).all(), f"{launch.name}: a program left a mark unwritten"
        assert (t[:, 1:] >= t[:, :-1]).all(), f"{launch.name}: marks out of order"
    # in one stream the second launch's programs get past their wait only after the first
    # launch's last program has ended
    assert launches[1].first("wait_done") >= launches[0].last("end")


def _trace_step_module():
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[1] / "benchmarks" / "e2e_decode"
    sys.path.insert(0, str(here))
    try:
        import trace_step
    finally:
        sys.path.remove(str(here))
    return trace_step


def test_trace_step_splits_each_launch_into_early_gap_work_and_share():
    from mlra.kernels.kernel_trace import TracedLaunch

    ts = _trace_step_module()
    ns = 1000  # one microsecond
    a = TracedLaunch("a", torch.tensor([[0, 0, 4, 5], [1, 1, 6, 8]]) * ns)
    b = TracedLaunch("b", torch.tensor([[2, 9, 12, 13], [3, 10, 11, 15]]) * ns)
    c = TracedLaunch("a", torch.tensor([[14, 16, 17, 18]]) * ns)
    rows = ts.launch_rows([a, b, c])
    assert rows[0] == {"name": "a", "early": 0.0, "gap": None, "work": 8.0, "main": 6.0,
                       "tail": 2.0, "share": 9.0}
    # b: entered at 2, released at 9 (a's last program ended at 8), done at 15
    assert rows[1] == {"name": "b", "early": 7.0, "gap": 1.0, "work": 6.0, "main": 3.0,
                       "tail": 3.0, "share": 7.0}
    assert rows[2]["gap"] == 1.0 and rows[2]["share"] is None
    assert ts.roles(["a", "b", "a", "b", "a", "b", "h"], n_layers=3) == [
        "a[0]", "b[0]", "a[0]", "b[0]", "a[0]", "b[0]", "h[extra]"]
    assert ts.roles(["s", "s", "m", "s", "s", "m", "s"], n_layers=2) == [
        "s[0]", "s[1]", "m[0]", "s[0]", "s[1]", "m[0]", "s[extra]"]
    # several steps' launches in a row (the profiler's view of replays): each step as one
    one = ["s", "s", "m", "s", "s", "m", "s"]
    assert ts.roles(one * 3, n_layers=2, steps=3) == ts.roles(one, n_layers=2) * 3
    assert ts.timer_step_ns([a, b]) == ns


def test_layer_programs_are_one_layers_launches_from_its_first_release():
    from mlra.kernels.kernel_trace import TracedLaunch

    ts = _trace_step_module()
    marks = torch.tensor([[0, 1, 2, 3]])
    launches = [TracedLaunch(n, marks * 1000 + 10_000 * i)
                for i, n in enumerate(["a", "b", "a", "b", "head"])]
    layer = ts.layer_programs(launches, n_layers=2, layer=1)
    assert [x["name"] for x in layer] == ["a", "b"]
    assert layer[0]["marks_us"] == [[-1.0, 0.0, 1.0, 2.0]]  # released at 21 us
    assert layer[1]["marks_us"] == [[9.0, 10.0, 11.0, 12.0]]


def test_spread_gives_each_marks_earliest_median_and_latest_program():
    ts = _trace_step_module()
    programs = [{"name": "a", "marks_us": [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 9.0],
                                           [1.0, 2.0, 3.0, 4.0]]}]
    lines = ts.spread_lines(programs)
    assert lines[2] == ("| 0 `a` | 3 | 0.00 / 1.00 / 4.00 | 1.00 / 2.00 / 5.00 | "
                        "2.00 / 3.00 / 6.00 | 3.00 / 4.00 / 9.00 |")
