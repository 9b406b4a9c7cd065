"""The L2 lookahead of batch-1 decode steps (:mod:`mlra.kernels.lookahead`): which bytes it
plans to prefetch, that the kernel's chunks cover exactly those bytes (its recording form, in
the Triton interpreter on a CPU), and on a Hopper GPU that a step with it gives the logits of
the step without it, bit for bit. Its PTX order is checked in ``test_pdl.py``."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mlra.kernels import lookahead
from mlra.kernels.lookahead import Span

HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def _ranges(spans: list[Span]) -> list[tuple[int, int]]:
    """Every byte range the spans describe, as (start address, end address)."""
    out = []
    for s in spans:
        base = s.tensor.data_ptr()
        out += [(base + start, base + start + s.length) for start in s.starts()]
    return sorted(out)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def test_mlp_spans_start_where_each_program_of_the_mlp_kernel_starts():
    hidden, d, programs = 9880, 64, 132  # H not a multiple of P: ranges of 74 and 75 units
    w_gate = torch.zeros(hidden, d, dtype=torch.bfloat16)
    w_up = torch.zeros(hidden, d, dtype=torch.bfloat16)
    w_down = torch.zeros(hidden, d, dtype=torch.bfloat16).t()  # [d, hidden], column-major
    spans = lookahead.mlp_row_spans(w_gate, w_up, w_down, programs, rows=5)
    assert [s.tensor for s in spans] == [w_gate, w_up, w_down]
    unit = d * 2
    for s in spans:
        assert s.length == 5 * unit and s.count == programs
        # program p's range is [p H // P, (p + 1) H // P) (the MLP kernel's h_lo)
        assert s.starts() == [(p * hidden // programs) * unit for p in range(programs)]
    # never more rows than the shortest range holds
    assert lookahead.mlp_row_spans(w_gate, w_up, w_down, programs, rows=500)[0].length == \
        (hidden // programs) * unit


def test_plan_takes_whole_tensors_first_then_mlp_rows_within_the_budget():
    wo = torch.zeros(256, 128, dtype=torch.bfloat16)  # 64 KB
    g = torch.zeros(1000, 128, dtype=torch.bfloat16)
    u = torch.zeros(1000, 128, dtype=torch.bfloat16)
    dn = torch.zeros(1000, 128, dtype=torch.bfloat16).t()
    budget = 64 * 1024 + 10 * 3 * 4 * 256  # wo, then 4 rows (of 256 bytes) for 10 programs
    spans = lookahead.plan(budget, [wo], (g, u, dn), programs=10)
    assert spans[0].tensor is wo and spans[0].nbytes == wo.numel() * 2
    assert [s.length for s in spans[1:]] == [4 * 256] * 3
    assert sum(s.nbytes for s in spans) <= budget
    # a tensor that does not fit is skipped, the MLP rows still use the budget
    spans = lookahead.plan(10 * 3 * 2 * 256, [wo], (g, u, dn), programs=10)
    assert [s.tensor for s in spans] == [g, u, dn] and spans[0].length == 2 * 256
    assert lookahead.plan(0, [wo], (g, u, dn), programs=10) == []


def test_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(lookahead.LOOKAHEAD_ENV, raising=False)
    assert lookahead.lookahead_budget() == int(lookahead.DEFAULT_LOOKAHEAD_MB * (1 << 20))
    monkeypatch.setenv(lookahead.LOOKAHEAD_ENV, "0")
    assert lookahead.lookahead_budget() == 0
    monkeypatch.setenv(lookahead.LOOKAHEAD_ENV, "1.5")
    assert lookahead.lookahead_budget() == 3 << 19
    monkeypatch.setenv(lookahead.LOOKAHEAD_ENV, "lots")
    with pytest.raises(ValueError, match="MLRA_LOOKAHEAD_MB"):
        lookahead.lookahead_budget()


def test_aligned_keeps_ranges_inside_their_bytes_on_16_byte_boundaries():
    t = torch.zeros(4096, dtype=torch.uint8)
    s = Span(t, 100, count=3, stride=512, offset=6).aligned()
    assert s is not None and s.address() % 16 == 0 and s.length % 16 == 0
    assert s.offset >= 6 and s.offset + s.length <= 6 + 100
    assert Span(t, 8, offset=1).aligned() is None  # nothing left
    assert Span(t, 64, count=2, stride=24).aligned() is None  # starts of varying alignment


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("chunk", [64, 256])
def test_kernel_chunks_cover_exactly_the_planned_bytes(chunk):
    """The recording form of the kernel (the interpreter on a CPU; no prefetch) lists each
    chunk: together they are the planned ranges, without overlap, none longer than a chunk,
    all 16-byte aligned."""
    from mlra.kernels.triton_lookahead import lookahead_triton

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on a CPU
    wo = torch.zeros(50, 40, dtype=torch.bfloat16, device=dev)  # 4000 bytes: not whole chunks
    hidden, d = 37, 24  # 37 units over 5 programs: ranges of 7 and 8 units
    g = torch.zeros(hidden, d, dtype=torch.bfloat16, device=dev)
    u = torch.zeros(hidden, d, dtype=torch.bfloat16, device=dev)
    dn = torch.zeros(hidden, d, dtype=torch.bfloat16, device=dev).t()
    spans = [s.aligned() for s in [lookahead.whole(wo),
                                   *lookahead.mlp_row_spans(g, u, dn, 5, rows=3)]]
    assert all(s is not None for s in spans)
    rec = lookahead_triton(spans, wo, record=True, chunk=chunk)
    chunks = [(int(a), int(a) + int(n)) for a, n in rec.tolist()]
    assert all(0 < b - a <= chunk and a % 16 == 0 and (b - a) % 16 == 0 for a, b in chunks)
    assert _merged(chunks) == _merged(_ranges(spans))
    assert sum(b - a for a, b in chunks) == sum(b - a for a, b in _merged(chunks))  # no overlap


def test_lookahead_is_a_no_op_off_cuda():
    from mlra import kernels

    x = torch.zeros(1, 64)
    kernels.decode_lookahead(x, [torch.zeros(64, 64)])  # nothing launched, nothing raised


@pytest.mark.skipif(not ON_HOPPER, reason="the lookahead runs on Hopper (or newer) GPUs")
@pytest.mark.parametrize("name", ["mlra_4", "mla", "gqa"])
def test_step_with_lookahead_equals_the_step_without(name, monkeypatch):
    """Batch 1, captured in a CUDA graph: the lookahead launch changes no value."""
    from mlra.bench.paged import random_paged_cache
    from mlra.bench.timing import graphed
    from mlra.config import ModelConfig
    from mlra.decoding import DecodeStep
    from mlra.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.preset(name, "small", zero_init_output=False)
    model = Transformer(cfg).to("cuda", torch.bfloat16).eval()
    device = torch.device("cuda")
    cache, block_table, seq_lens = random_paged_cache(cfg, 1, 900, 64, torch.bfloat16, device)
    ids = torch.randint(0, cfg.vocab_size, (1, 1), device=device)
    from mlra.kernels import triton_lookahead

    launches = []
    real = triton_lookahead.lookahead_triton
    monkeypatch.setattr(triton_lookahead, "lookahead_triton",
                        lambda *a, **k: launches.append(1) or real(*a, **k))
    out = {}
    with torch.no_grad():
        for mb, method in (("0", "bulk"), ("64", "bulk"), ("64", "lines")):
            monkeypatch.setenv(lookahead.LOOKAHEAD_ENV, mb)
            monkeypatch.setenv(lookahead.METHOD_ENV, method)
            step = DecodeStep(model, cache, fused=True)
            assert step.fused
            n = len(launches)

            def run(step=step, key=(mb, method)):
                out[key] = step(ids, block_table, seq_lens)

            fn, error = graphed(run, device)
            assert error is None, error
            fn()
            torch.cuda.synchronize()
            assert (len(launches) > n) == (mb != "0")  # one launch per layer, or none
    assert torch.equal(out[("64", "bulk")], out[("0", "bulk")])
    assert torch.equal(out[("64", "lines")], out[("0", "bulk")])
