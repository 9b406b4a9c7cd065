"""The Gluon one-row projection with its weights resident in shared memory
(:mod:`mlra.kernels.gluon_skinny`) against the torch reference.

On a Hopper GPU the kernel runs at the paper's shapes (q/kv down, q up, output projection with
its residual), with every rows-per-program choice, inputs not a multiple of the TMA box,
output rows not a multiple of a program's, three weights, an fp32 input, and through
:func:`mlra.kernels.skinny_linear`'s dispatch. Without one (CI) the plan is checked, and the
kernel is compiled for sm_90 with Triton's bundled ptxas: its resources and the order of its
PTX (weights in flight before the wait for the previous kernel, nothing it writes read
before).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_without_interpreter

from mlra import kernels
from mlra.kernels.reference import skinny_linear_ref
from mlra.kernels.testing import rel_error

if not kernels.gluon_available():
    pytest.skip("this Triton has no Gluon Hopper support", allow_module_level=True)

from mlra.kernels.gluon_skinny import (  # noqa: E402
    BOX_K,
    ResidentConfig,
    block_bytes,
    box_chunks,
    resident_plan,
    resident_supports,
    skinny_linear_resident,
)

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="the Gluon kernel needs a Hopper GPU")
H200_SMS, SM90_SMEM_PER_SM = 132, 233472
BF = torch.bfloat16
TOL = 2e-2  # relative L2 error (bf16 outputs)


def test_plan_keeps_every_program_resident_and_fills_the_gpu():
    """The paper-size attention projections fit, every program resident at once and every
    multiprocessor busy, with the largest blocks that still do; what does not fit in the
    GPU's shared memory (GQA's 28 MB q/k/v, the 309 MB head) or breaks TMA's rules does not
    go to the kernel."""
    shapes = {"q/kv down": (3072, [1024, 576]), "q up": (1024, [4608]),
              "MLA q up": (1536, [4608]), "MLA q/kv down": (3072, [1536, 576]),
              "output projection": (3072, [3072])}
    for name, (k, ns) in shapes.items():
        bn = resident_plan(k, ns, H200_SMS, SM90_SMEM_PER_SM)
        assert bn is not None, name
        tiles = sum(-(-n // bn) for n in ns)
        per_sm = SM90_SMEM_PER_SM // block_bytes(k, bn)
        assert H200_SMS <= tiles <= H200_SMS * per_sm, name
        bigger = 2 * bn
        if bigger <= 32:  # the next size up would leave multiprocessors idle or not fit
            b_tiles = sum(-(-n // bigger) for n in ns)
            assert (b_tiles < H200_SMS
                    or b_tiles > H200_SMS * (SM90_SMEM_PER_SM // block_bytes(k, bigger))), name
    assert resident_plan(3072, [1024, 576], H200_SMS, SM90_SMEM_PER_SM) == 8
    assert resident_plan(1024, [4608], H200_SMS, SM90_SMEM_PER_SM) == 32
    assert resident_plan(3072, [3072, 768, 768], H200_SMS, SM90_SMEM_PER_SM) is None
    assert resident_plan(3072, [50304], H200_SMS, SM90_SMEM_PER_SM) is None
    assert resident_plan(3000, [64], H200_SMS, SM90_SMEM_PER_SM) is None  # K % 256
    assert resident_plan(128, [64], H200_SMS, SM90_SMEM_PER_SM) is None  # K < one box
    assert resident_plan(8448, [64], H200_SMS, SM90_SMEM_PER_SM) is None  # > 32 chunks
    # a fixed size is kept where it fits, refused where it does not
    assert resident_plan(1024, [4608], H200_SMS, SM90_SMEM_PER_SM, block_n=16) == 16
    assert resident_plan(3072, [3072], H200_SMS, SM90_SMEM_PER_SM, block_n=32) == 32  # 96
    assert resident_plan(8192, [64], H200_SMS, SM90_SMEM_PER_SM, block_n=32) is None  # 512 KB
    assert resident_plan(3072, [3072], H200_SMS, SM90_SMEM_PER_SM, block_n=4) is None  # 768
    # a small weight keeps the most programs it can have
    assert resident_plan(512, [40], H200_SMS, SM90_SMEM_PER_SM) == 4


def test_boxes_cover_the_largest_power_of_two_of_chunks_up_to_the_cap():
    assert [box_chunks(c) for c in (12, 4, 6, 5, 9, 16)] == [4, 4, 2, 1, 1, 4]
    assert box_chunks(16, 8) == 8 and box_chunks(12, 1) == 1


def test_unknown_trigger_is_refused_by_name(monkeypatch):
    with pytest.raises(ValueError, match="trigger='late'"):
        ResidentConfig(trigger="late")
    from mlra.kernels.gluon_skinny import CONFIG_ENV, _config

    monkeypatch.setenv(CONFIG_ENV, '{"trigger": "late"}')
    with pytest.raises(ValueError, match=f"{CONFIG_ENV}=.*trigger='late'"):
        _config(None)
    monkeypatch.setenv(CONFIG_ENV, '{"trigger": "wait"}')
    assert _config(None).trigger == "wait"


def test_dispatch_plans_each_call_once_and_honours_its_switch(monkeypatch):
    """``dispatch_resident`` (what ``kernels.skinny_linear`` asks): one plan per call, none
    with ``MLRA_SKINNY_RESIDENT=0`` or SwiGLU, an unknown value of the switch refused; a call
    the plan refuses comes back as None."""
    from mlra.kernels import gluon_skinny

    plans = []
    monkeypatch.setattr(gluon_skinny, "_call_plan", lambda *a: plans.append(a) and None)
    x, w = torch.zeros(1, 1024, dtype=BF), [torch.zeros(64, 1024, dtype=BF)]
    assert gluon_skinny.dispatch_resident(x, w) is None and len(plans) == 1
    assert gluon_skinny.dispatch_resident(x, w, swiglu=True) is None and len(plans) == 1
    monkeypatch.setenv(gluon_skinny.ENV, "0")
    assert gluon_skinny.dispatch_resident(x, w) is None and len(plans) == 1
    monkeypatch.setenv(gluon_skinny.ENV, "off")  # not a value of the switch: refused by name
    with pytest.raises(ValueError, match="MLRA_SKINNY_RESIDENT='off': expected one of"):
        gluon_skinny.dispatch_resident(x, w)
    with pytest.raises(ValueError, match="outside resident_supports"):
        gluon_skinny.skinny_linear_resident(x, w)


def test_calls_off_hopper_are_not_taken():
    x = torch.zeros(1, 1024, dtype=BF)
    assert not resident_supports(x, [torch.zeros(64, 1024, dtype=BF)])


COMPILED = [(3072, 2, 8, True, False), (1024, 1, 32, True, False),
            (3072, 1, 8, False, True), (1280, 3, 4, True, False), (1536, 1, 32, True, False)]

_COMPILE_SCRIPT = """
import json, sys
from mlra.kernels.aot import hopper_summary
from mlra.kernels.gluon_skinny import compile_for_sm90
cases, extras, products = json.loads(sys.argv[1])
res = {}
for k, nw, bn, norm, res_ in cases:
    c = compile_for_sm90(k, nw, bn, norm, res_, products=products)
    res[f"{k}-{nw}-{bn}-{norm}-{res_}"] = dict(ptx=c.asm["ptx"], **hopper_summary(c))
for name, kwargs in extras.items():
    res[name] = dict(ptx=compile_for_sm90(products=products, **kwargs).asm["ptx"])
json.dump(res, open(sys.argv[2], "w"))
"""


def compile_cases(tmp_path_factory, cases: list, extras: dict, products: str = "fma") -> dict:
    """``cases`` ``(K, weights, block_n, norm, residual)`` compiled for sm_90 (PTX and
    :func:`~mlra.kernels.aot.hopper_summary`, keyed ``"K-weights-block_n-norm-residual"``) and
    ``extras`` (name: :func:`compile_for_sm90` keywords; PTX only), in a process without
    ``TRITON_INTERPRET``."""
    out = tmp_path_factory.mktemp(f"gluon_skinny_{products}") / "ptx.json"
    run_without_interpreter(["-c", _COMPILE_SCRIPT, json.dumps([cases, extras, products]),
                             str(out)])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """``COMPILED`` and the variants the tests below look at, compiled for sm_90."""
    base = dict(K=3072, num_w=2, block_n=8)
    return compile_cases(tmp_path_factory, COMPILED, {
        "traced": dict(base, trace=True),
        "trigger_after_wait": dict(base, early_trigger=False),
        "next_reads": dict(K=3072, num_w=1, block_n=8, norm=False, residual=True, next_mats=3)})


@pytest.mark.parametrize("k,nw,bn,norm,res", COMPILED)
def test_weights_are_in_flight_before_the_wait(compiled, k, nw, bn, norm, res):
    """Every TMA load of the weights is issued before ``griddepcontrol.wait``; before it the
    only global loads are the norm's weight (none without a norm); the next kernel is let
    launch once the loads are issued, before the wait; within the shared memory
    :func:`block_bytes` plans, no spills."""
    c = compiled[f"{k}-{nw}-{bn}-{norm}-{res}"]
    ptx = c["ptx"]
    assert c["spill_stores"] == 0 and c["spill_loads"] == 0
    assert c["shared"] + 1024 <= block_bytes(k, bn) and c["fits"]
    chunks = k // BOX_K
    cb = box_chunks(chunks)
    copies = c["counts"]["cp.async.bulk.tensor"]  # the boxes of one weight, per weight's
    assert copies % (chunks // cb) == 0 and copies <= nw * chunks // cb  # branch (some merged)
    assert all(box == [bn, cb, BOX_K] for box in c["tma_boxes"])
    wait = ptx.index("griddepcontrol.wait")
    assert ptx.rindex("cp.async.bulk.tensor") < wait
    assert ptx.count("griddepcontrol.wait") == 1
    assert ptx.count("griddepcontrol.launch_dependents") == 1
    assert ptx.rindex("cp.async.bulk.tensor") < ptx.index("griddepcontrol.launch_dependents") < wait
    before = ptx[:wait]
    assert ("ld.global" in before) == norm
    assert "st.global" not in before


def test_trigger_after_the_wait_on_request(compiled):
    """``ResidentConfig(trigger="wait")``: the next launch only once this one is released."""
    ptx = compiled["trigger_after_wait"]["ptx"]
    assert ptx.count("griddepcontrol.launch_dependents") == 1
    assert ptx.index("griddepcontrol.wait") < ptx.index("griddepcontrol.launch_dependents")


def test_next_reads_are_fetched_once_every_box_has_landed(compiled):
    """With a :class:`NextReads` hint: bulk L2 prefetches issued by one thread (predicated)
    after the program's last wait for its own weight boxes, before its output is stored;
    without one, no prefetch at all."""
    ptx = compiled["next_reads"]["ptx"]
    assert ptx.count("cp.async.bulk.prefetch.L2") == 1  # in a loop over this program's ranges
    assert "@p cp.async.bulk.prefetch.L2" in ptx and "%tid.x" in ptx
    fetch = ptx.index("cp.async.bulk.prefetch.L2")
    assert ptx.index("griddepcontrol.wait") < ptx.rindex("mbarrier.try_wait") < fetch
    assert fetch < ptx.index("st.global")
    assert all("prefetch.L2" not in c["ptx"] for key, c in compiled.items() if key != "next_reads")


def test_trace_marks_are_compiled_in_only_with_a_trace(compiled):
    """Four timer reads per program with a trace (entry, past the wait, products done,
    exit), none without."""
    traced = compiled["traced"]["ptx"]
    assert traced.count("%globaltimer") == 4
    wait = traced.index("griddepcontrol.wait")
    assert traced.index("%globaltimer") < wait < traced.rindex("%globaltimer")
    assert all("%globaltimer" not in c["ptx"] for key, c in compiled.items() if key != "traced")


def _case(k, ns, seed, norm=True, res=False, x_dtype=BF):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, k, generator=g)).to(x_dtype).cuda()
    ws = [(torch.randn(n, k, generator=g) * k ** -0.5).to(BF).cuda() for n in ns]
    nw = ((torch.randn(k, generator=g) * 0.2 + 1.0).to(BF).cuda()) if norm else None
    r = torch.randn(1, ns[0], generator=g).to(BF).cuda() if res else None
    return x, ws, nw, r


def _check(x, ws, nw, r, out, in_scale=1.0):
    ref = skinny_linear_ref(x.float(), [w.float() for w in ws],
                            norm_weight=None if nw is None else nw.float(), eps=1e-6,
                            in_scale=in_scale, residual=None if r is None else r.float())
    assert len(out) == len(ref)
    for o, e in zip(out, ref, strict=True):
        assert o.dtype == BF and o.shape == e.shape
        assert not torch.isnan(o).any()
        assert rel_error(o.float(), e) < TOL


CASES = [(3072, (1024, 576), True, False), (1024, (4608,), True, False),
         (1536, (4608,), True, False), (3072, (3072,), False, True),
         (1280, (200, 36, 100), True, False), (2304, (77,), False, True)]


@needs_hopper
@pytest.mark.parametrize("k,ns,norm,res", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("block_n,box", [(None, None), (4, None), (8, 1), (8, 2), (16, None),
                                         (32, None), (32, 1)])
def test_matches_reference(k, ns, norm, res, block_n, box):
    cfg = ResidentConfig(block_n=block_n, box_chunks=box, max_mb=0)
    x, ws, nw, r = _case(k, ns, k + len(ns))
    if not resident_supports(x, ws, config=cfg):
        pytest.skip(f"block_n={block_n} does not fit {k} x {ns}")
    out = skinny_linear_resident(x, ws, norm_weight=nw, eps=1e-6, in_scale=1.7 if norm else 1.0,
                                 residual=r, config=cfg)
    _check(x, ws, nw, r, out, in_scale=1.7 if norm else 1.0)


@needs_hopper
def test_next_reads_do_not_change_the_result():
    """The output projection's shape with the one-launch MLP's first rows as its hint (three
    matrices of 9880 x 3072, 132 parts, 4 rows each): the same bits as without."""
    from mlra.kernels.hints import NextReads

    x, ws, _, r = _case(3072, (3072,), 11, norm=False, res=True)
    mats = tuple(torch.randn(9880, 3072, device="cuda").to(BF) for _ in range(3))
    plain = skinny_linear_resident(x, ws, residual=r)
    hinted = skinny_linear_resident(x, ws, residual=r, next_reads=NextReads(mats, 132, 4))
    assert torch.equal(plain[0], hinted[0])
    _check(x, ws, None, r, hinted)


@needs_hopper
def test_fp32_input_is_rounded_like_the_reference():
    x, ws, nw, _ = _case(3072, (1024, 576), 5, x_dtype=torch.float32)  # 9.8 MB: taken
    _check(x, ws, nw, None, skinny_linear_resident(x, ws, norm_weight=nw, eps=1e-6))


@needs_hopper
def test_dispatch_sends_one_row_here_unless_switched_off(monkeypatch):
    """``kernels.skinny_linear`` takes this kernel for one row of weights that fit (equal to
    the Triton kernel's result within bf16 rounding), the Triton kernel for two rows or with
    ``MLRA_SKINNY_RESIDENT=0``."""
    from mlra.kernels import gluon_skinny

    calls = []
    real = gluon_skinny._planned_launch

    def counted(*args, **kwargs):  # count the calls this kernel ran
        out = real(*args, **kwargs)
        if out is not None:
            calls.append(1)
        return out

    monkeypatch.setattr(gluon_skinny, "_planned_launch", counted)
    x, ws, nw, _ = _case(3072, (1024, 576), 7)
    fast = kernels.skinny_linear(x, ws, norm_weight=nw)
    assert calls == [1]
    kernels.skinny_linear(torch.cat([x, x]), ws, norm_weight=nw)
    assert calls == [1]
    monkeypatch.setenv("MLRA_SKINNY_RESIDENT", "0")
    plain = kernels.skinny_linear(x, ws, norm_weight=nw)
    assert calls == [1]
    for a, b in zip(fast, plain, strict=True):
        assert rel_error(a.float(), b.float()) < TOL
    # a size cap leaves larger weights (9.8 MB here) to the Triton kernel; by default none
    assert resident_supports(x, ws, config=ResidentConfig(max_mb=10))
    assert not resident_supports(x, ws, config=ResidentConfig(max_mb=9))
    xo, wo, _, _ = _case(3072, (3072,), 8, norm=False)
    assert resident_supports(xo, wo)
    assert not resident_supports(xo, wo, config=ResidentConfig(max_mb=16))
