"""W_UV and the output projection of one token in one launch
(:func:`mlra.kernels.gluon_skinny.uv_output_projection_resident`) against the torch reference.

On a Hopper GPU: the paper-size MLRA-4 and MLA shapes and a small one with groups, repeated
calls and CUDA-graph replays (the grid barrier's counters are left at zero), and the dispatch
of :func:`mlra.kernels.latent_up_output_projection`. Without one (CI): the kernel compiled for
sm_90 with Triton's bundled ptxas, its resources and the order of its PTX.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_without_interpreter

from mlra import kernels
from mlra.kernels.reference import latent_up_output_ref, skinny_linear_ref
from mlra.kernels.testing import rel_error

if not kernels.gluon_available():
    pytest.skip("this Triton has no Gluon Hopper support", allow_module_level=True)

from mlra.kernels.gluon_skinny import block_bytes, uv_output_projection_resident  # noqa: E402

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="the Gluon kernel needs a Hopper GPU")
BF = torch.bfloat16
TOL = 2e-2  # relative L2 error (bf16 outputs)

# branches, groups, heads per group, latent width, head dim
MLRA4, MLA, SMALL = (4, 1, 24, 128, 128), (1, 1, 24, 512, 128), (2, 2, 4, 64, 64)

_COMPILE_SCRIPT = """
import json, sys
from mlra.kernels.aot import hopper_summary
from mlra.kernels.gluon_skinny import compile_for_sm90
res = {}
for name, uv in json.loads(sys.argv[1]).items():
    c = compile_for_sm90(3072, 1, 8, norm=False, residual=True, uv=tuple(uv) + (8,))
    res[name] = dict(ptx=c.asm["ptx"], **hopper_summary(c))
json.dump(res, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uv_oproj") / "ptx.json"
    run_without_interpreter(["-c", _COMPILE_SCRIPT, json.dumps({"mlra4": MLRA4, "mla": MLA}),
                             str(out)])
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["mlra4", "mla"])
def test_weights_before_the_wait_then_head_outputs_barrier_and_products(compiled, name):
    """Before the PDL wait: the output projection's TMA loads, this program's W_UV slice (the
    only global loads), the trigger; after it: the attention result, the head outputs' store,
    the barrier's atomics and the fence, then the products; no spills, within the plan."""
    c = compiled[name]
    ptx = c["ptx"]
    assert c["spill_stores"] == 0 and c["spill_loads"] == 0
    assert c["shared"] + 1024 <= block_bytes(3072, 8) and c["fits"]
    wait = ptx.index("griddepcontrol.wait")
    assert ptx.rindex("cp.async.bulk.tensor") < ptx.index("griddepcontrol.launch_dependents") < wait
    assert "ld.global" in ptx[:wait] and "st.global" not in ptx[:wait]
    assert "atom." not in ptx[:wait]
    first_atom = ptx.index("atom.global.gpu.acq_rel.add")
    assert wait < ptx.index("st.global", wait) < first_atom  # head outputs, then arrive
    fence = ptx.index("fence.acq_rel.gpu")
    assert first_atom < ptx.index("ld.volatile.global") < fence  # poll, then the fence
    assert ptx.count("atom.global") == 2  # arrive, and the count of programs past the barrier


def _case(shape, seed):
    nb, g_, hg, w, d = shape
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 1, nb, g_, hg, w, generator=gen).cuda()
    w_up = (torch.randn(nb * g_, w, hg * 2 * d, generator=gen) * w ** -0.5).to(BF).cuda()
    k = g_ * hg * d
    w_o = (torch.randn(k, k, generator=gen) * k ** -0.5).to(BF).cuda()
    res = torch.randn(1, 1, k, generator=gen).to(BF).cuda()
    return z, w_up, w_o, res


def _reference(z, w_up, w_o, res, scale, d):
    o = latent_up_output_ref(z, w_up.float(), scale, d)
    return skinny_linear_ref(o, [w_o.float()], residual=res.float())[0]


@needs_hopper
@pytest.mark.parametrize("shape", [MLRA4, MLA, SMALL], ids=["mlra4", "mla", "small"])
def test_matches_reference_and_leaves_its_barrier_ready(shape):
    z, w_up, w_o, res = _case(shape, sum(shape))
    ref = _reference(z, w_up, w_o, res, 0.7, shape[-1])
    for _ in range(3):  # each launch must find the barrier's counters at zero again
        out = uv_output_projection_resident(z, w_up, 0.7, shape[-1], w_o, res)
        assert out.dtype == BF and out.shape == ref.shape
        assert rel_error(out.float(), ref) < TOL


@needs_hopper
def test_graph_replays_read_fresh_inputs():
    z, w_up, w_o, res = _case(MLRA4, 3)
    out = uv_output_projection_resident(z, w_up, 0.5, 128, w_o, res)  # compiled, eager
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = uv_output_projection_resident(z, w_up, 0.5, 128, w_o, res)
    for seed in range(3):
        z.copy_(torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_error(out.float(), _reference(z, w_up, w_o, res, 0.5, 128)) < TOL


@needs_hopper
def test_dispatch_takes_one_launch_unless_switched_off(monkeypatch):
    from mlra.kernels import gluon_skinny

    calls = []
    real = gluon_skinny.uv_output_projection_resident
    monkeypatch.setattr(gluon_skinny, "uv_output_projection_resident",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    z, w_up, w_o, res = _case(MLRA4, 5)
    one = kernels.latent_up_output_projection(z, w_up, 0.9, 128, w_o, res)
    assert calls == [1]
    monkeypatch.setenv("MLRA_UV_OPROJ", "0")
    two = kernels.latent_up_output_projection(z, w_up, 0.9, 128, w_o, res)
    assert calls == [1]
    assert rel_error(one.float(), two.float()) < TOL
    monkeypatch.delenv("MLRA_UV_OPROJ")
    z2 = torch.cat([z, z])  # two tokens: the two launches
    kernels.latent_up_output_projection(z2, w_up, 0.9, 128, w_o, torch.cat([res, res]))
    assert calls == [1]
