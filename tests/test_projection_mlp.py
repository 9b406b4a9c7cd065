"""A decode step's output projection run inside the one-launch MLP kernel
(:func:`mlra.kernels.triton_mlp.projection_mlp_triton`): ``h = residual + W_in a``, then
``h + MLP(h)``, against the fp32 reference.

Without CUDA the kernel runs in the Triton interpreter at small sizes (the projection, the
partials and the column sums as three launches); on a CUDA machine compiled at the paper's
sizes, with both grid barriers in one launch."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mlra import kernels  # noqa: E402
from mlra.kernels.reference import projection_mlp_ref, swiglu_mlp_ref  # noqa: E402
from mlra.kernels.testing import rel_error  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEVICE = "cuda" if ON_GPU else "cpu"
BF = torch.bfloat16
TOL = 2e-2

# (d_model, hidden, K = heads x head_dim): the paper's MLRA-4 / MLA / GQA on a GPU (K = 3072),
# odd and tiny ones on the CPU (rows of W_in not a multiple of the programs, K not a power of 2)
SHAPES = [(3072, 9880, 3072), (3072, 9448, 3072), (1024, 2736, 1536)] if ON_GPU else \
    [(96, 200, 80), (40, 130, 24), (64, 37, 100)]


def _inputs(d: int, h: int, k: int, seed: int, a_dtype=BF):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(BF).to(DEVICE)

    a = (torch.randn(1, k, generator=g)).to(a_dtype).to(DEVICE)
    w_in = rnd(d, k, scale=k ** -0.5)  # the projection moves h by as much as the residual
    res = rnd(1, d)
    nw = rnd(d, scale=0.2) + 1.0
    wg, wu = rnd(h, d, scale=d ** -0.5), rnd(h, d, scale=d ** -0.5)
    wd = rnd(d, h, scale=h ** -0.5)
    return a, w_in, res, nw, wg, wu, wd


def _ref(a, w_in, res, nw, wg, wu, wd):
    return projection_mlp_ref(a.float(), w_in.float(), res.float(), nw.float(), 1e-6,
                              wg.float(), wu.float(), wd.float())


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-h{s[1]}-k{s[2]}")
@pytest.mark.parametrize("cfg", [None, dict(block_h=2, per_sm=3), dict(one_launch=False)],
                         ids=["default", "bh2-3per-sm", "separate-launches"])
def test_projection_then_mlp_matches_reference(shape, cfg):
    from mlra.kernels.triton_mlp import MlpConfig, projection_mlp_triton

    d, h, k = shape
    a, w_in, res, nw, wg, wu, wd = _inputs(d, h, k, d + h + k)
    wdc = wd.t().contiguous().t()
    config = MlpConfig(**cfg) if cfg else None
    ref = _ref(a, w_in, res, nw, wg, wu, wd)
    first = projection_mlp_triton(a, w_in, res, nw, 1e-6, wg, wu, wdc, config=config)
    again = projection_mlp_triton(a, w_in, res, nw, 1e-6, wg, wu, wdc, config=config)
    assert first.dtype == BF and first.shape == res.shape
    assert not torch.isnan(first).any()
    assert rel_error(first.float(), ref) < TOL
    assert torch.equal(first, again)  # counters left at zero, sums in a fixed order
    # the MLP ran on h = res + W_in a and added h, not the residual it was given: the MLP of
    # the bare residual is far from the result
    skipped = swiglu_mlp_ref(res.float(), nw.float(), 1e-6, wg.float(), wu.float(),
                             wd.float(), res.float())
    assert rel_error(skipped, ref) > 10 * TOL


@needs_triton
def test_projection_mlp_takes_fp32_head_outputs_and_keeps_the_residual_shape():
    from mlra.kernels.triton_mlp import projection_mlp_triton

    d, h, k = SHAPES[0]
    a, w_in, res, nw, wg, wu, wd = _inputs(d, h, k, 5, a_dtype=torch.float32)
    out = projection_mlp_triton(a.view(1, 1, k), w_in, res.view(1, 1, d), nw, 1e-6, wg, wu,
                                wd.t().contiguous().t())
    assert out.shape == (1, 1, d)
    assert rel_error(out.float().view(1, d), _ref(a, w_in, res, nw, wg, wu, wd)) < TOL


@needs_triton
def test_projection_mlp_refuses_what_it_cannot_take():
    from mlra.kernels.triton_mlp import projection_mlp_triton

    d, h, k = SHAPES[-1]
    a, w_in, res, nw, wg, wu, wd = _inputs(d, h, k, 3)
    wdc = wd.t().contiguous().t()
    with pytest.raises(ValueError, match="one row"):
        projection_mlp_triton(torch.cat([a, a]), w_in, torch.cat([res, res]), nw, 1e-6, wg, wu,
                              wdc)
    with pytest.raises(ValueError, match="w_in must be"):
        projection_mlp_triton(a, w_in.t(), res, nw, 1e-6, wg, wu, wdc)
    with pytest.raises(ValueError, match="column-major"):
        projection_mlp_triton(a, w_in, res, nw, 1e-6, wg, wu, wd)


@pytest.mark.parametrize("switch", ["1", "0"])
def test_projection_mlp_dispatch_computes_the_reference_for_one_row_and_several(
        monkeypatch, switch):
    """Every path of :func:`kernels.projection_mlp` (the one launch, the switch that keeps
    the projection apart, several rows, a CPU) computes the reference."""
    monkeypatch.setenv(kernels.MLP_PROJECTION_ENV, switch)
    d, h, k = 64, 40, 48
    a, w_in, res, nw, wg, wu, wd = _inputs(d, h, k, 1)
    for down in (wd, wd.t().contiguous().t()):
        for rows in (1, 3):
            aa, rr = a.expand(rows, k) * torch.arange(1, rows + 1, device=DEVICE)[:, None], \
                res.expand(rows, d)
            out = kernels.projection_mlp(aa.to(BF), w_in, rr.contiguous(), nw, 1e-6, wg, wu,
                                         down)
            assert out.shape == (rows, d)
            assert rel_error(out.float(), _ref(aa.to(BF), w_in, rr, nw, wg, wu, wd)) < TOL
