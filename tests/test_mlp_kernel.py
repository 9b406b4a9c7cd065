"""The one-launch batch-1 MLP kernel (:mod:`mlra.kernels.triton_mlp`) against its fp32
reference, its dispatch, and the decode step's weight layout for it.

Without CUDA the kernel runs in the Triton interpreter at small sizes (partials and column
sums as two launches: the interpreter runs programs one after another); on a CUDA machine the
same tests run compiled at the paper's sizes, with the grid barrier."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mlra import kernels  # noqa: E402
from mlra.kernels.reference import swiglu_mlp_ref  # noqa: E402
from mlra.kernels.testing import rel_error  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEVICE = "cuda" if ON_GPU else "cpu"
BF = torch.bfloat16
TOL = 2e-2

# (d_model, hidden): the paper's MLRA-4 / MLA / GQA on a GPU; odd and tiny ones on the CPU
SHAPES = [(3072, 9880), (3072, 9448), (3072, 9728), (1024, 2736)] if ON_GPU else \
    [(96, 200), (64, 37), (40, 130), (128, 8)]


def _weights(d: int, h: int, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(BF).to(DEVICE)

    x = rnd(1, d)
    nw = rnd(d, scale=0.2) + 1.0
    wg, wu = rnd(h, d, scale=d ** -0.5), rnd(h, d, scale=d ** -0.5)
    wd = rnd(d, h, scale=h ** -0.5)
    return x, nw, wg, wu, wd


def _ref(x, nw, wg, wu, wd, res):
    return swiglu_mlp_ref(x.float(), nw.float(), 1e-6, wg.float(), wu.float(), wd.float(),
                          None if res is None else res.float())


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-h{s[1]}")
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no-residual"])
@pytest.mark.parametrize("cfg", [None, dict(block_h=2, per_sm=3), dict(block_h=1, num_stages=3),
                                 dict(one_launch=False), dict(next_left=4)],
                         ids=["default", "bh2-3per-sm", "bh1-st3", "two-launches", "next-left4"])
def test_mlp_kernel_matches_reference(shape, residual, cfg):
    from mlra.kernels.triton_mlp import MlpConfig, swiglu_mlp_triton

    d, h = shape
    x, nw, wg, wu, wd = _weights(d, h, d + h)
    wdc = wd.t().contiguous().t()
    res = x if residual else None
    config = MlpConfig(**cfg) if cfg else None
    ref = _ref(x, nw, wg, wu, wd, res)
    first = swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, res, config=config)
    again = swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, res, config=config)
    assert first.dtype == BF and first.shape == x.shape
    assert not torch.isnan(first).any()
    assert rel_error(first.float(), ref) < TOL
    # deterministic: the barrier counters are left at zero and the sums run in a fixed order
    assert torch.equal(first, again)


@needs_triton
@pytest.mark.skipif(not ON_GPU, reason="the one-launch form runs only compiled (a barrier)")
def test_the_barrier_count_only_grows_by_a_grid_per_launch():
    """The one-launch form's barrier count is never reset: each launch adds its programs, so
    it is a multiple of the grid after every call (a launch that counted wrongly would
    leave it between, and the next launch's barrier would open early or never)."""
    from mlra.kernels.triton_mlp import LAST_LAUNCH, barrier_counter, swiglu_mlp_triton

    d, h = SHAPES[0]
    x, nw, wg, wu, wd = _weights(d, h, 13)
    wdc = wd.t().contiguous().t()
    first = swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, x)
    parts = LAST_LAUNCH["programs"]
    count = barrier_counter(x.device, parts)
    before = int(count.item())
    assert LAST_LAUNCH["one_launch"] and before > 0 and before % parts == 0
    for _ in range(5):
        assert torch.equal(swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, x), first)
    torch.cuda.synchronize()
    assert int(count.item()) == before + 5 * parts


def test_the_tail_plan_hands_out_ranks_by_groups_and_refuses_what_does_not_fit():
    from mlra.kernels.triton_mlp import tail_plan

    # the paper's MLP on the H200: 132 programs of 2 units per step; 2 steps for the first
    # 44 ranks, 1 for the next 44: 132 steps, 264 units handed out at run time
    assert tail_plan(9880, 132, 2, 2) == (9880 - 264, 2, 44)
    assert tail_plan(9880, 132, 2, 1, 66) == (9880 - 132, 1, 66)
    assert tail_plan(200, 4, 16, 0) == (200, 0, 1)
    with pytest.raises(ValueError, match="leaving fewer than one per program"):
        tail_plan(8, 4, 16, 1)
    with pytest.raises(ValueError, match="group \\* steps <= 4"):
        tail_plan(200, 4, 16, 1, 5)


TAIL_SHAPES = SHAPES[:3]  # the tail needs at least one unit per program besides its own


@needs_triton
@pytest.mark.parametrize("shape", TAIL_SHAPES, ids=lambda s: f"d{s[0]}-h{s[1]}")
@pytest.mark.parametrize("tail", [dict(tail_steps=1), dict(tail_steps=2, tail_group=1)],
                         ids=["1-step", "2-steps-group1"])
def test_the_run_time_tail_sums_each_unit_once_whatever_program_takes_each_rank(shape, tail):
    """``MlpConfig(tail_steps=...)``: the units after ``static_units`` go to programs by the
    order in which they near their ends. With every other unit's gate row zero, the output is
    the tail's alone: a unit left out or taken twice would show. Starting the rank count
    elsewhere hands the ranks to other programs: the result stays bit-identical (each rank's
    share goes to its own row, summed in a fixed order), and every launch advances the count
    by its programs."""
    from mlra.kernels.triton_mlp import (
        LAST_LAUNCH,
        MlpConfig,
        rank_counter,
        swiglu_mlp_triton,
    )

    d, h = shape
    x, nw, wg, wu, wd = _weights(d, h, 7 * d + h)
    wdc = wd.t().contiguous().t()
    config = MlpConfig(**tail, block_h=2)
    count = None
    outs = []
    for shift in (0, 1, 2):  # ranks handed out from offsets 0, 1 and 3
        if count is not None:
            count += shift
        before = None if count is None else int(count.item())
        outs.append(swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, x, config=config))
        parts = LAST_LAUNCH["programs"]
        count = rank_counter(x.device, parts)
        assert before is None or int(count.item()) == before + parts
    assert all(torch.equal(out, outs[0]) for out in outs[1:])
    assert rel_error(outs[0].float(), _ref(x, nw, wg, wu, wd, x)) < TOL

    static = LAST_LAUNCH["static_units"]
    assert LAST_LAUNCH["block_h"] == 2 and 0 < static < h
    wg[:static] = 0  # only the tail's units contribute
    ref = _ref(x, nw, wg, wu, wd, None)
    out = swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, None, config=config)
    assert ref.abs().max() > 0 and rel_error(out.float(), ref) < TOL


@needs_triton
@pytest.mark.parametrize("tail", [{}, dict(tail_steps=2), dict(tail_steps=1, tail_group=3)],
                         ids=["no-tail", "2-steps", "1-step-group3"])
def test_the_l2_hint_names_the_units_each_program_reads_first(tail):
    """The hint the launch before the MLP gets (``first_reads``, ``MLRA_MLP_L2_UNITS``)
    splits over the programs the units the launch itself streams in fixed ranges: all of
    them, or with a run-time tail only those outside it (the rest would hint units that no
    program starts with)."""
    from mlra.kernels.triton_mlp import LAST_LAUNCH, MlpConfig, first_reads, swiglu_mlp_triton

    d, h = SHAPES[0]
    x, nw, wg, wu, wd = _weights(d, h, 11)
    wdc = wd.t().contiguous().t()
    config = MlpConfig(**tail)
    swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wdc, x, config=config)
    hint = first_reads(x, wg, wu, wdc, 4, config=config)
    assert (hint.parts, hint.units) == (LAST_LAUNCH["programs"], 4)
    assert hint.range_rows == LAST_LAUNCH["static_units"]
    assert (hint.range_rows < h) == bool(tail)
    assert [m.data_ptr() for m in hint.mats] == [w.data_ptr() for w in (wg, wu, wdc)]
    assert hint.mats[2].shape == wg.shape  # the down weight's columns, as rows


@needs_triton
def test_the_barrier_diagnostic_switch_is_read_and_refused_by_name(monkeypatch):
    """Both kernels' trace diagnostics read their variable through one helper: unset is off,
    a known name its mark mode, anything else refused by name."""
    from mlra.kernels._triton_common import env_choice
    from mlra.kernels.triton_mlp import DIAG_ENV, DIAG_MARKS

    monkeypatch.delenv(DIAG_ENV, raising=False)
    assert env_choice(DIAG_ENV, DIAG_MARKS) == 0
    monkeypatch.setenv(DIAG_ENV, " barrier ")
    assert env_choice(DIAG_ENV, DIAG_MARKS) == 1
    monkeypatch.setenv(DIAG_ENV, "landed")  # the resident projections' mode, not the MLP's
    with pytest.raises(ValueError, match="MLRA_MLP_DIAG='landed': expected one of 'barrier'"):
        env_choice(DIAG_ENV, DIAG_MARKS)
    if importlib.util.find_spec("triton.experimental.gluon") is not None:
        from mlra.kernels import gluon_skinny

        monkeypatch.setenv(gluon_skinny.DIAG_ENV, "barrier")
        with pytest.raises(ValueError, match="MLRA_RESIDENT_DIAG='barrier'"):
            env_choice(gluon_skinny.DIAG_ENV, gluon_skinny.DIAG_MARKS)


@needs_triton
def test_mlp_kernel_rounds_an_fp32_input_and_keeps_leading_dims():
    from mlra.kernels.triton_mlp import swiglu_mlp_triton

    d, h = SHAPES[0]
    x, nw, wg, wu, wd = _weights(d, h, 7)
    wdc = wd.t().contiguous().t()
    x32 = x.float().view(1, 1, d)
    out = swiglu_mlp_triton(x32, nw, 1e-6, wg, wu, wdc, x.view(1, 1, d))
    assert out.shape == (1, 1, d)
    assert rel_error(out.float().view(1, d), _ref(x, nw, wg, wu, wd, x)) < TOL


@needs_triton
def test_mlp_kernel_refuses_what_it_cannot_take():
    from mlra.kernels.triton_mlp import swiglu_mlp_triton

    d, h = SHAPES[-1]
    x, nw, wg, wu, wd = _weights(d, h, 3)
    with pytest.raises(ValueError, match="column-major"):
        swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wd)
    with pytest.raises(ValueError, match="one row"):
        swiglu_mlp_triton(x.expand(2, d), nw, 1e-6, wg, wu, wd.t().contiguous().t())


def test_mlp_dispatch_takes_the_kernel_only_for_one_row_and_a_column_major_down():
    d, h = 64, 40
    x, nw, wg, wu, wd = _weights(d, h, 1)
    wdc = wd.t().contiguous().t()
    assert kernels.column_major(wdc) and not kernels.column_major(wd)
    assert kernels.mlp_kernel_supports(x, nw, wg, wu, wdc)
    assert not kernels.mlp_kernel_supports(x, nw, wg, wu, wd)  # row-major down
    assert not kernels.mlp_kernel_supports(torch.cat([x, x]), nw, wg, wu, wdc)  # two rows
    assert not kernels.mlp_kernel_supports(x, None, wg, wu, wdc)  # no norm
    assert not kernels.mlp_kernel_supports(x, nw, wg.float(), wu, wdc)  # mixed dtypes
    wide = torch.zeros(1, 8200, dtype=BF)  # wider than the kernel's registers take
    w_wide = torch.zeros(4, 8200, dtype=BF)
    assert kernels.column_major(w_wide.t())
    assert not kernels.mlp_kernel_supports(wide, wide[0], w_wide, w_wide, w_wide.t())
    assert kernels.mlp_kernel_supports(wide[:, :8192], wide[0, :8192], w_wide[:, :8192],
                                       w_wide[:, :8192], w_wide[:, :8192].contiguous().t())
    # every path computes the reference (on a CPU the projections' references)
    for w in (wd, wdc):
        for rows in (x, torch.cat([x, -x])):
            out = kernels.swiglu_mlp(rows, nw, 1e-6, wg, wu, w, residual=rows)
            ref = swiglu_mlp_ref(rows.float(), nw.float(), 1e-6, wg.float(), wu.float(),
                                 wd.float(), rows.float())
            assert rel_error(out.float(), ref) < TOL


def test_prepare_fused_stores_down_weights_column_major_without_changing_the_model(
        monkeypatch, tmp_path):
    from mlra import load_checkpoint
    from mlra.checkpoints.format import save_model
    from mlra.config import ModelConfig
    from mlra.fused_step import prepare_fused
    from mlra.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.preset("mlra_4", "tiny")
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    prepare_fused(model)  # off CUDA: nothing to do
    assert not any(kernels.column_major(b.mlp.w_down.weight) for b in model.layers)
    monkeypatch.setattr(kernels, "mlp_kernel_wanted", lambda w: True)
    prepare_fused(model)
    prepare_fused(model)  # idempotent
    downs = [b.mlp.w_down.weight for b in model.layers]
    assert all(kernels.column_major(w) for w in downs)
    assert all(isinstance(w, torch.nn.Parameter) for w in downs)
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # a checkpoint of the prepared model loads into a fresh one with the same outputs
    save_model(model, tmp_path / "ckpt")
    fresh = load_checkpoint(tmp_path / "ckpt")
    assert not kernels.column_major(fresh.layers[0].mlp.w_down.weight)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_mlp_kernel_env_switch_keeps_the_row_major_layout(monkeypatch):
    w = torch.zeros(8, 4)
    monkeypatch.setenv(kernels.MLP_KERNEL_ENV, "0")
    assert not kernels.mlp_kernel_wanted(w)


def test_resident_programs_follow_registers_shared_memory_and_threads():
    from mlra.kernels.triton_mlp import resident_per_sm

    hopper = (2048, 65536, 233472)
    # 128 registers x 128 threads: four programs fill the registers (and 49 KB x 4 fit)
    assert resident_per_sm(128, 49168, 4, hopper) == 4
    # 129 registers round up to 136 per thread: three
    assert resident_per_sm(129, 0, 4, hopper) == 3
    # shared memory decides: 98 KB each, two
    assert resident_per_sm(64, 98320, 4, hopper) == 2
    # threads decide: 16 warps, at most two programs of 2048 threads
    assert resident_per_sm(32, 0, 16, hopper) == 4 and resident_per_sm(32, 0, 32, hopper) == 2
    # a program that does not fit at all
    assert resident_per_sm(255, 240000, 8, hopper) == 0


def test_a_model_prepared_for_fused_decoding_saves_through_transformers(monkeypatch, tmp_path):
    """``save_pretrained`` of a model whose down weights a decode step made column-major."""
    pytest.importorskip("transformers", minversion="5.24")  # the `hf` extra's range
    from transformers import AutoModelForCausalLM

    from mlra.config import ModelConfig
    from mlra.fused_step import prepare_fused
    from mlra.hf import MlraForCausalLM
    from mlra.model import Transformer

    torch.manual_seed(1)
    model = Transformer(ModelConfig.preset("gqa", "tiny")).eval()
    monkeypatch.setattr(kernels, "mlp_kernel_wanted", lambda w: True)
    prepare_fused(model)
    assert kernels.column_major(model.layers[0].mlp.w_down.weight)
    MlraForCausalLM.from_model(model, eos_token_id=None, pad_token_id=0).save_pretrained(
        tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


@needs_triton
def test_counters_are_kept_per_stream_and_kernel():
    """Two decode steps on two streams at once must not share arrival counters or barriers."""
    from mlra.kernels._triton_common import stream_counters

    dev = torch.device(DEVICE)
    a = stream_counters(dev, "mlp", 2, stream=11)
    assert a.dtype == torch.int32 and a.numel() == 2 and not a.any()
    assert stream_counters(dev, "mlp", 2, stream=11) is a  # kept
    assert stream_counters(dev, "mlp", 2, stream=12) is not a  # another stream
    assert stream_counters(dev, "skinny", 2, stream=11) is not a  # another kernel
    with pytest.raises(ValueError, match="asked for 8"):  # never replaced under a graph
        stream_counters(dev, "mlp", 8, stream=11)


@needs_triton
@pytest.mark.skipif(not ON_GPU, reason="two CUDA streams at once need a GPU")
def test_split_k_projections_on_two_streams_at_once_keep_each_result():
    """Split-K projections on two streams overlap; each stream has its own arrival counters,
    so both results equal the ones computed alone (shared counters would let one launch's
    last arrival sum the other's partials."""
    from mlra.kernels.triton_skinny import SkinnyConfig, skinny_linear_triton

    cfg = SkinnyConfig(split_k=4)
    runs = []
    for seed in (21, 22):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 9880, generator=g).to(BF).to(DEVICE)
        w = (torch.randn(3072, 9880, generator=g) * 0.01).to(BF).to(DEVICE)
        runs.append((x, w))
    alone = [skinny_linear_triton(x, [w], residual=None, config=cfg)[0] for x, w in runs]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    torch.cuda.synchronize()
    outs: list[list[torch.Tensor]] = [[], []]
    for _ in range(20):
        for i, (s, (x, w)) in enumerate(zip(streams, runs, strict=True)):
            with torch.cuda.stream(s):
                outs[i].append(skinny_linear_triton(x, [w], config=cfg)[0])
    torch.cuda.synchronize()
    for i in range(2):
        assert all(torch.equal(o, alone[i]) for o in outs[i])


@needs_triton
@pytest.mark.skipif(not ON_GPU, reason="two CUDA streams at once need a GPU")
def test_one_launch_mlp_on_two_streams_at_once_keeps_each_result():
    """Two decode loops on one GPU: the one-launch MLP's cooperative grids on two streams never
    wait for each other at the barrier (a plain launch could: each grid holding part of the
    GPU) and each result equals the one computed alone, bit for bit."""
    from mlra.kernels.triton_mlp import LAST_LAUNCH, swiglu_mlp_triton

    runs = []
    for seed in (31, 32):
        x, nw, wg, wu, wd = _weights(3072, 9880, seed)
        runs.append((x, nw, wg, wu, wd.t().contiguous().t(), x))
    alone = [swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wd, res) for x, nw, wg, wu, wd, res in runs]
    assert LAST_LAUNCH["one_launch"]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    torch.cuda.synchronize()
    outs: list[list[torch.Tensor]] = [[], []]
    for _ in range(20):
        for i, (s, (x, nw, wg, wu, wd, res)) in enumerate(zip(streams, runs, strict=True)):
            with torch.cuda.stream(s):
                outs[i].append(swiglu_mlp_triton(x, nw, 1e-6, wg, wu, wd, res))
    torch.cuda.synchronize()
    for i in range(2):
        assert all(torch.equal(o, alone[i]) for o in outs[i])
