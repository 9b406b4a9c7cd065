"""The resident one-row projection with its products on the tensor cores
(:mod:`mlra.kernels.gluon_skinny_mma`, ``ResidentConfig(products="mma")``).

On a Hopper GPU: the paper's shapes and others against the torch reference and against the
FMA form. Without one (CI): the plan, the segment and grouping rules, and the kernel compiled
for sm_90 (resources, TMA boxes of ``W'``, tensor-core products, the order of its PTX).
"""

from __future__ import annotations

import pytest
import torch

from mlra import kernels
from mlra.kernels.reference import skinny_linear_ref
from mlra.kernels.testing import rel_error

if not kernels.gluon_available():
    pytest.skip("this Triton has no Gluon Hopper support", allow_module_level=True)

from test_gluon_skinny import (  # noqa: E402
    BF,
    H200_SMS,
    SM90_SMEM_PER_SM,
    TOL,
    _case,
    compile_cases,
    needs_hopper,
)

from mlra.kernels.gluon_skinny import (  # noqa: E402
    ResidentConfig,
    block_bytes,
    resident_plan,
    resident_supports,
    skinny_linear_resident,
)
from mlra.kernels.gluon_skinny_mma import chunk_groups, segments  # noqa: E402

PAPER = {"q/kv down": (3072, [1024, 576]), "q up": (1024, [4608]), "MLA q up": (1536, [4608]),
         "MLA q/kv down": (3072, [1536, 576]), "output projection": (3072, [3072])}


def test_segments_give_every_warp_a_tile_and_groups_stay_within_four():
    """``S`` rows of ``W'`` per output: at least 64 per program (four warps of 16 rows);
    boxes of 64 columns of ``W'`` in at most four power-of-two groups."""
    assert [segments(bn) for bn in (4, 8, 16, 32)] == [16, 8, 4, 4]
    assert chunk_groups(3072, 8) == (2, 3)  # K' = 384: 6 boxes
    assert chunk_groups(1024, 32) == (1, 4)  # K' = 256: 4 boxes
    assert chunk_groups(8192, 32) == (8, 4)  # 32 boxes
    assert chunk_groups(3072, 4) == (1, 3)  # S = 16: K' = 192
    assert chunk_groups(1280, 8) is None  # not a multiple of 64 S
    assert chunk_groups(64 * 4 * 5, 32) is None  # 5 boxes: no power-of-two grouping


def test_plan_takes_the_paper_shapes_resident():
    for name, (k, ns) in PAPER.items():
        bn = resident_plan(k, ns, H200_SMS, SM90_SMEM_PER_SM, products="mma")
        assert bn is not None, name
        tiles = sum(-(-n // bn) for n in ns)
        assert tiles <= H200_SMS * (SM90_SMEM_PER_SM // block_bytes(k, bn, "mma")), name
    # a shape only the FMA form takes (K' not a multiple of 64 at any block)
    assert resident_plan(1280, [64], H200_SMS, SM90_SMEM_PER_SM) is not None
    assert resident_plan(1280, [64], H200_SMS, SM90_SMEM_PER_SM, products="mma") is None


def test_unknown_products_are_refused_by_name():
    with pytest.raises(ValueError, match="products='wmma'"):
        ResidentConfig(products="wmma")


COMPILED = [(3072, 2, 8, True, False), (1024, 1, 32, True, False), (3072, 1, 8, False, True),
            (1536, 1, 32, True, False), (3072, 3, 4, True, False)]

@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """``COMPILED`` and the hinted variant, compiled for sm_90 with tensor-core products."""
    return compile_cases(tmp_path_factory, COMPILED, {"next_reads": dict(
        K=3072, num_w=1, block_n=8, norm=False, residual=True, next_mats=3)}, "mma")


@pytest.mark.parametrize("k,nw,bn,norm,res", COMPILED)
def test_weights_stream_before_the_wait_and_multiply_on_tensor_cores(compiled, k, nw, bn,
                                                                      norm, res):
    """Boxes ``[S block_n, 64]`` of ``W'``, all issued before the PDL wait (one weight's
    worth per program); the products as ``mma.sync`` m16n8k16 in bf16 with fp32
    accumulators, their count what the shape needs per warp; within the planned shared
    memory, no spills."""
    c = compiled[f"{k}-{nw}-{bn}-{norm}-{res}"]
    ptx = c["ptx"]
    seg = segments(bn)
    assert c["spill_stores"] == 0 and c["spill_loads"] == 0
    assert c["shared"] + 1024 <= block_bytes(k, bn, "mma") and c["fits"]
    assert c["num_warps"] == 4
    assert all(box == [seg * bn, 64] for box in c["tma_boxes"])
    chunks = k // (64 * seg)
    copies = c["counts"]["cp.async.bulk.tensor"]  # a weight's boxes per branch (some merged)
    assert copies % chunks == 0 and copies <= nw * chunks
    wait = ptx.index("griddepcontrol.wait")
    assert ptx.rindex("cp.async.bulk.tensor") < wait
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx
    m_tiles, n_tiles, k_steps = seg * bn // 16 // 4, 2 * seg // 8, chunks * 4
    assert ptx.count("mma.sync") == m_tiles * n_tiles * k_steps
    assert ptx.index("ldmatrix") > wait
    assert ("ld.global" in ptx[:wait]) == norm  # only the norm's weight before the wait
    assert "st.global" not in ptx[:wait]


def test_next_reads_follow_the_products(compiled):
    ptx = compiled["next_reads"]["ptx"]
    fetch = ptx.index("@p cp.async.bulk.prefetch.L2")
    assert ptx.rindex("mbarrier.try_wait") < fetch < ptx.index("st.global")
    assert all("prefetch.L2" not in c["ptx"] for key, c in compiled.items() if key != "next_reads")


CASES = [(3072, (1024, 576), True, False), (1024, (4608,), True, False),
         (1536, (4608,), True, False), (3072, (3072,), False, True),
         (3072, (1536, 576), True, False), (2048, (200, 36, 100), True, False),
         (1024, (77,), False, True)]


@needs_hopper
@pytest.mark.parametrize("k,ns,norm,res", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("block_n", [None, 4, 8, 16, 32])
def test_matches_reference_and_the_fma_form(k, ns, norm, res, block_n):
    """Against the fp32 reference within bf16 rounding, and against the FMA form within a
    few bf16 units (both round the same fp32 sums, computed in different orders)."""
    cfg = ResidentConfig(block_n=block_n, max_mb=0, products="mma")
    x, ws, nw, r = _case(k, ns, k + len(ns))
    if not resident_supports(x, ws, config=cfg):
        pytest.skip(f"block_n={block_n} does not fit {k} x {ns}")
    scale = 1.7 if norm else 1.0
    out = skinny_linear_resident(x, ws, norm_weight=nw, eps=1e-6, in_scale=scale, residual=r,
                                 config=cfg)
    ref = skinny_linear_ref(x.float(), [w.float() for w in ws],
                            norm_weight=None if nw is None else nw.float(), eps=1e-6,
                            in_scale=scale, residual=None if r is None else r.float())
    fma = skinny_linear_resident(x, ws, norm_weight=nw, eps=1e-6, in_scale=scale, residual=r,
                                 config=ResidentConfig(block_n=block_n, max_mb=0))
    for o, e, f in zip(out, ref, fma, strict=True):
        assert o.dtype == BF and o.shape == e.shape and not torch.isnan(o).any()
        assert rel_error(o.float(), e) < TOL
        assert (o.float() - f.float()).abs().max() <= 4 * 2 ** -8 * f.float().abs().max()


@needs_hopper
def test_the_step_takes_it_from_the_environment(monkeypatch):
    """``MLRA_RESIDENT_CONFIG='{"products": "mma"}'`` sends the dispatch's calls here."""
    from mlra.kernels import gluon_skinny

    monkeypatch.setenv(gluon_skinny.CONFIG_ENV, '{"products": "mma"}')
    calls = []
    real = gluon_skinny._planned_launch

    def spy(*args, **kw):
        calls.append(args[6].products)
        return real(*args, **kw)

    monkeypatch.setattr(gluon_skinny, "_planned_launch", spy)
    x, ws, nw, _ = _case(3072, (1024, 576), 3)
    out = kernels.skinny_linear(x, ws, norm_weight=nw, eps=1e-6)
    assert calls == ["mma"]
    ref = skinny_linear_ref(x.float(), [w.float() for w in ws], norm_weight=nw.float(), eps=1e-6)
    assert all(rel_error(o.float(), e) < TOL for o, e in zip(out, ref, strict=True))
