"""The Gluon (Hopper) paged latent decode kernel against the torch reference.

On a Hopper GPU every shape the dispatch sends to the kernel runs at real sizes: ragged
lengths, a shuffled page table, NaN in every cache row a sequence does not own and poisoned
block-table entries past its pages (``random_latent_case``), NaN-prefilled outputs, Tq 1 and
2, pages of 16 and 64, forced splits. Without one (CI), the kernel is compiled for sm_90 with
Triton's bundled ptxas and its resources and PTX are checked.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_without_interpreter

from mlra import kernels
from mlra.kernels.reference import paged_latent_decode_ref
from mlra.kernels.testing import assert_decode_matches, random_latent_case

if not kernels.gluon_available():
    pytest.skip("this Triton has no Gluon Hopper support", allow_module_level=True)

from mlra.kernels.gluon_latent import (  # noqa: E402
    GluonLatentConfig,
    default_gluon_config,
    gluon_latent_supports,
    paged_latent_decode_gluon,
)

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not HOPPER, reason="the Gluon kernel needs a Hopper GPU")
OUT_TOL = 1e-2  # relative L2 error of out (bf16 probabilities in P @ V)
LSE_TOL = 2e-3  # absolute error of lse
SM90_SMEM = 232448


COMPILED = [(512, 64, 2, True), (256, 64, 2, False), (128, 64, 2, True), (128, 64, 1, True),
            (512, 16, 2, True), (128, 32, 2, False), (64, 32, 2, True),
            (256, 64, None, True), (256, 16, None, False)]  # None: the default configuration

_COMPILE_SCRIPT = """
import json, sys
from mlra.kernels.aot import hopper_summary
from mlra.kernels.gluon_latent import GluonLatentConfig, compile_for_sm90
res = {}
for w, page, wg, pdl in json.loads(sys.argv[1]):
    k = compile_for_sm90(w, 64, page, GluonLatentConfig(warpgroups=wg), pdl=pdl)
    res[f"{w}-{page}-{wg}-{pdl}"] = dict(ptx=k.asm["ptx"], **hopper_summary(k))
json.dump(res, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """The configurations of ``COMPILED`` compiled for sm_90, in a process without
    ``TRITON_INTERPRET`` (which would replace the kernel by an interpreted one)."""
    out = tmp_path_factory.mktemp("gluon") / "ptx.json"
    run_without_interpreter(["-c", _COMPILE_SCRIPT, json.dumps(COMPILED), str(out)])
    return json.loads(out.read_text())


@pytest.mark.parametrize("w,page,wg,pdl", COMPILED)
def test_kernel_compiles_for_sm90_within_registers_and_shared_memory(compiled, w, page, wg,
                                                                     pdl):
    k = compiled[f"{w}-{page}-{wg}-{pdl}"]
    ptx = k["ptx"]
    assert k["spill_stores"] == 0 and k["spill_loads"] == 0
    assert k["shared"] <= SM90_SMEM and k["fits"]
    assert k["warp_specialized"] and k["counts"]["wgmma.mma_async"] > 0
    assert k["counts"]["mbarrier.try_wait"] > 0
    # the partitions' register budgets: the producer warp low, the consumers high
    budgets = sorted(int(n) for _, n in k["setmaxnreg"])
    assert budgets[0] <= 40 and budgets[-1] >= 160
    # TMA loads of the cache tiles: a latent and a RoPE load per page a tile covers
    assert k["counts"]["cp.async.bulk.tensor"] >= 2 * (64 // min(page, 64))
    assert ("griddepcontrol.wait" in ptx) == pdl
    if pdl:
        # two waits: the consumers' before any global load (lengths, queries), the
        # producer's before the first tile that may hold the step's new rows (the tiles
        # before it load while the previous kernel still runs)
        assert ptx.count("griddepcontrol.wait") == 2
        assert ptx.index("griddepcontrol.wait") < ptx.index("ld.global")


def test_default_configurations_follow_the_width_and_shared_memory():
    """512-wide streams: 64-row tiles, two warpgroups, two buffers beside the query block;
    narrower: 128-row tiles, one warpgroup, as many buffers (up to 4) as fit; never fewer
    than two (a ring of one would serialise loads and products)."""
    mla = default_gluon_config(512, 64, SM90_SMEM)
    assert (mla.block_n, mla.warpgroups, mla.num_buf) == (64, 2, 2)
    assert (64 * 576 * 2) * (mla.num_buf + 1) <= SM90_SMEM  # ring + query block fit
    gla = default_gluon_config(256, 64, SM90_SMEM)
    assert (gla.block_n, gla.warpgroups, gla.num_buf) == (128, 1, 2)
    narrow = default_gluon_config(128, 64, SM90_SMEM)
    assert (narrow.block_n, narrow.warpgroups, narrow.num_buf) == (128, 1, 4)
    assert default_gluon_config(128, 64, 100_000).num_buf == 2
    # what the caller sets is kept, the rest follows from it
    mine = default_gluon_config(128, 64, SM90_SMEM, GluonLatentConfig(block_n=32))
    assert mine.block_n == 32 and mine.warpgroups == 1 and mine.num_buf == 4


def test_seesaw_schedule_is_chosen_by_split_length(monkeypatch):
    """512-wide streams take the seesaw schedule where a split holds enough tokens (long
    contexts), the default one for short splits; narrower streams never; the environment and
    an explicit configuration override the length."""
    from mlra.kernels import gluon_latent as gk

    monkeypatch.setattr(gk, "SEESAW_ENV", "")
    long_split = gk.SEESAW_MIN_TOKENS * 4
    assert default_gluon_config(512, 64, SM90_SMEM, tokens_per_split=long_split).seesaw
    assert not default_gluon_config(512, 64, SM90_SMEM, tokens_per_split=993).seesaw
    assert not default_gluon_config(512, 64, SM90_SMEM).seesaw
    assert not default_gluon_config(256, 64, SM90_SMEM, tokens_per_split=long_split).seesaw
    off = GluonLatentConfig(seesaw=False)
    assert not default_gluon_config(512, 64, SM90_SMEM, off, tokens_per_split=long_split).seesaw
    monkeypatch.setattr(gk, "SEESAW_ENV", "1")
    assert default_gluon_config(512, 64, SM90_SMEM, tokens_per_split=993).seesaw
    monkeypatch.setattr(gk, "SEESAW_ENV", "0")
    assert not default_gluon_config(512, 64, SM90_SMEM, tokens_per_split=long_split).seesaw
    cfg = default_gluon_config(512, 64, SM90_SMEM, GluonLatentConfig(seesaw=True))
    assert cfg.warpgroups == 2 and cfg.num_buf == 2  # ring, query block and P buffer fit
    assert gk.seesaw_p_slots(cfg, 512, 64, SM90_SMEM) == 1


def test_seesaw_kernel_compiles_for_sm90(tmp_path):
    """Two consumer partitions (one per output half) and the producer: warp-specialised,
    within shared memory, spills bounded (180 bytes when written: hoisted wgmma descriptors,
    benchmarks/decode/NOTES.md; H200 timing in
    benchmarks/decode/results/h200/fixed/call5)."""
    script = (
        "import json, sys\n"
        "from mlra.kernels.aot import hopper_summary\n"
        "from mlra.kernels.gluon_latent import GluonLatentConfig, compile_for_sm90\n"
        "k = compile_for_sm90(512, 64, 64, GluonLatentConfig(seesaw=True))\n"
        "json.dump(hopper_summary(k), open(sys.argv[1], 'w'))\n")
    out = tmp_path / "seesaw.json"
    run_without_interpreter(["-c", script, str(out)])
    k = json.loads(out.read_text())
    assert k["fits"] and k["warp_specialized"]
    assert k["spill_stores"] <= 256 and k["spill_loads"] <= 256
    budgets = sorted(int(n) for _, n in k["setmaxnreg"])
    assert budgets[0] <= 40 and budgets[-1] >= 232
    # the two consumers each: the score product (K = 512 + 64) and their half of P V
    assert "m64n256k16" in k["wgmma_shapes"] and "m64n64k16" in k["wgmma_shapes"]


def test_supports_refuses_what_the_kernel_cannot_take():
    case = random_latent_case([40], 64, 1, 1, 4, 128)  # CPU tensors
    assert not gluon_latent_supports(case["q_latent"], case["q_rope"], case["cache"])


def _check(out, lse, ref_out, ref_lse):
    assert_decode_matches(out, lse, ref_out, ref_lse, OUT_TOL, LSE_TOL)


# (streams NB, width W, heads, Tq, page, lengths, splits, layout)
CASES = [
    (1, 512, 64, 1, 64, [70001, 4096, 1], None, "latents_first"),  # MLA (bench shape)
    (1, 512, 64, 2, 64, [9000, 130, 64], 7, "latents_first"),  # MLA, Tq 2, forced splits
    (1, 512, 24, 1, 64, [131072, 333], None, "latents_first"),  # MLA at 2.9B
    (1, 512, 24, 2, 16, [5000, 17], 3, "rope_first"),  # page 16, offsets honoured
    (1, 256, 32, 1, 64, [33333, 100], None, "latents_first"),  # GLA-2 at TP 2
    (1, 256, 12, 2, 64, [7000, 65], 2, "rope_first"),  # GLA-2 at 2.9B, one group
    (1, 128, 64, 1, 64, [131072, 5], None, "latents_first"),  # MLRA-4 at TP 4
    (1, 128, 64, 2, 16, [20000, 63], 4, "latents_first"),  # page 16, Tq 2
    (4, 128, 64, 1, 64, [65536, 777], None, "latents_first"),  # MLRA-4 fused
    (4, 128, 24, 2, 64, [8192, 129], None, "rope_first"),  # MLRA-4 at 2.9B, Tq 2
    (2, 256, 24, 1, 16, [20000, 17], None, "latents_first"),  # MLRA-2 at 2.9B, page 16
    (5, 64, 8, 1, 32, [3000, 40], 2, "latents_first"),  # five streams: two launches
    (1, 64, 128, 2, 64, [4000, 2], None, "latents_first"),  # several row blocks
]


@needs_hopper
@pytest.mark.parametrize("nb,w,hq,tq,page,lens,splits,layout", CASES)
def test_gluon_kernel_matches_reference(nb, w, hq, tq, page, lens, splits, layout):
    case = random_latent_case(lens, page, tq, nb, hq, w, layout=layout, device="cuda",
                              seed=len(lens) * 17 + w + tq)
    assert gluon_latent_supports(case["q_latent"], case["q_rope"], case["cache"])
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    out = torch.full(ref_out.shape, float("nan"), device="cuda")
    lse = torch.full(ref_lse.shape, float("nan"), device="cuda")
    paged_latent_decode_gluon(**case, num_splits=splits, out=out, lse=lse)
    _check(out, lse, ref_out, ref_lse)


@needs_hopper
@pytest.mark.parametrize("w", [128, 256])
@pytest.mark.parametrize("cfg", [GluonLatentConfig(block_n=32, num_buf=3),
                                 GluonLatentConfig(block_n=64, warpgroups=2),
                                 GluonLatentConfig(num_buf=2)],
                         ids=["bn32-buf3", "bn64-wg2", "buf2"])
def test_gluon_launch_configurations_agree(cfg, w):
    case = random_latent_case([20000, 70, 3], 64, 2, 1, 64, w, device="cuda", seed=3)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    out, lse = paged_latent_decode_gluon(**case, config=cfg, num_splits=5)
    _check(out, lse, ref_out, ref_lse)


@needs_hopper
@pytest.mark.parametrize("case_args", [c for c in CASES if c[1] == 512])
def test_seesaw_schedule_matches_reference(case_args):
    """The seesaw form of the 512-wide kernel: ragged lengths (odd and even tile counts per
    split, a split of one tile), NaN past every length, Tq 2, pages of 16, forced splits."""
    nb, w, hq, tq, page, lens, splits, layout = case_args
    case = random_latent_case(lens, page, tq, nb, hq, w, layout=layout, device="cuda",
                              seed=len(lens) * 31 + tq)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    out = torch.full(ref_out.shape, float("nan"), device="cuda")
    lse = torch.full(ref_lse.shape, float("nan"), device="cuda")
    paged_latent_decode_gluon(**case, num_splits=splits, out=out, lse=lse,
                              config=GluonLatentConfig(seesaw=True))
    _check(out, lse, ref_out, ref_lse)
    for s in (1, 3):  # and an empty sequence gives 0 / -inf
        empty = random_latent_case([64 * 5 + 3, 0], 64, 1, 1, 24, 512, device="cuda", seed=s)
        o, lz = paged_latent_decode_gluon(**empty, num_splits=s,
                                          config=GluonLatentConfig(seesaw=True))
        _check(o, lz, *paged_latent_decode_ref(**empty))
        assert torch.all(o[1] == 0) and torch.all(lz[1] == float("-inf"))


def test_launch_parameters_come_from_the_environment(monkeypatch):
    """``MLRA_GLUON_CONFIG`` (tuning runs of whole steps): a JSON object of
    :class:`GluonLatentConfig` fields, refused by name when malformed; on a Hopper GPU a call
    without ``config`` runs with it and still matches the reference."""
    from mlra.kernels._triton_common import config_from_env
    from mlra.kernels.gluon_latent import CONFIG_ENV

    monkeypatch.setenv(CONFIG_ENV, '{"block_n": 32, "num_buf": 3}')
    assert config_from_env(CONFIG_ENV, GluonLatentConfig) == GluonLatentConfig(block_n=32,
                                                                               num_buf=3)
    if HOPPER:
        case = random_latent_case([5000, 70], 64, 1, 1, 64, 256, device="cuda", seed=5)
        ref_out, ref_lse = paged_latent_decode_ref(**case)
        out, lse = paged_latent_decode_gluon(**case, num_splits=3)
        _check(out, lse, ref_out, ref_lse)
    monkeypatch.setenv(CONFIG_ENV, "block_n=32")
    with pytest.raises(ValueError, match="MLRA_GLUON_CONFIG"):
        config_from_env(CONFIG_ENV, GluonLatentConfig)
    if HOPPER:
        with pytest.raises(ValueError, match="MLRA_GLUON_CONFIG"):
            paged_latent_decode_gluon(**case, num_splits=3)


@needs_hopper
def test_gluon_split_invariance_and_empty_sequence():
    """Any split factor gives the same result; a sequence with no tokens gives 0 / -inf."""
    case = random_latent_case([20000, 0], 64, 1, 1, 24, 512, device="cuda", seed=7)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    for s in (1, 2, 9):
        out, lse = paged_latent_decode_gluon(**case, num_splits=s)
        _check(out, lse, ref_out, ref_lse)
        assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))


@needs_hopper
def test_dispatch_sends_hopper_latent_calls_to_gluon(monkeypatch):
    """``kernels.paged_latent_decode`` runs the Gluon kernel on Hopper, the Triton one with
    ``MLRA_GLUON_LATENT=0``; both match the reference."""
    case = random_latent_case([5000, 9], 64, 1, 1, 24, 512, device="cuda", seed=9)
    assert kernels.gluon_latent_wanted(case["q_latent"], case["q_rope"], case["cache"])
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    _check(*kernels.paged_latent_decode(**case), ref_out, ref_lse)
    monkeypatch.setenv(kernels.GLUON_LATENT_ENV, "0")
    assert not kernels.gluon_latent_wanted(case["q_latent"], case["q_rope"], case["cache"])
    _check(*kernels.paged_latent_decode(**case), ref_out, ref_lse)


def test_a_gluon_build_failure_falls_back_to_triton_once_with_a_warning(monkeypatch):
    """Gluon's interface changes between Triton versions: if the kernel cannot be built
    here, the dispatch warns once and decodes with the Triton kernel from then on; a bad
    call (any other error) still raises."""
    from triton.runtime.errors import OutOfResources

    import mlra.kernels.gluon_latent as gluon_latent
    import mlra.kernels.triton_latent as triton_latent

    case = random_latent_case([40, 7], 64, 1, 1, 4, 512, seed=4)  # CPU tensors
    ref = paged_latent_decode_ref(**case)
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(1)
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(kernels, "_GLUON_FAILURE", [])
    monkeypatch.setattr(kernels, "use_triton", lambda t: True)
    monkeypatch.setattr(gluon_latent, "gluon_latent_supports", lambda *a: True)
    monkeypatch.setattr(gluon_latent, "paged_latent_decode_gluon", broken)
    monkeypatch.setattr(kernels, "gluon_available", lambda: True)
    monkeypatch.setattr(triton_latent, "paged_latent_decode_triton",
                        lambda *a, **k: paged_latent_decode_ref(*a, **k))
    with pytest.warns(RuntimeWarning, match="failed to build.*MLRA_GLUON_LATENT=0"):
        out, lse = kernels.paged_latent_decode(**case)
    assert torch.equal(out, ref[0]) and torch.equal(lse, ref[1])
    kernels.paged_latent_decode(**case)  # no second attempt
    assert len(attempts) == 1
    assert not kernels.gluon_latent_wanted(case["q_latent"], case["q_rope"], case["cache"])

    monkeypatch.setattr(kernels, "_GLUON_FAILURE", [])

    def bad_call(*args, **kwargs):
        raise ValueError("column offset 3 is not 16-byte aligned (TMA)")

    monkeypatch.setattr(gluon_latent, "paged_latent_decode_gluon", bad_call)
    with pytest.raises(ValueError, match="16-byte"):
        kernels.paged_latent_decode(**case)
