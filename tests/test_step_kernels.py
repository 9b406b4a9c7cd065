"""The decode-step kernels (small-batch projections, latent/GQA prepare, latent up-projection)
against their torch references, and the fused decode step against the module-by-module step.

Without CUDA the Triton kernels run in the interpreter at small sizes; on a CUDA machine the
same tests run compiled at the paper's sizes. References are computed in fp32 from the same
bf16 inputs; tolerances are relative L2 errors (bf16 outputs carry ~4e-3 of rounding).
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mlra.cache import PagedKVCache  # noqa: E402
from mlra.config import VARIANTS, ModelConfig  # noqa: E402
from mlra.decoding import Decoder  # noqa: E402
from mlra.kernels.reference import (  # noqa: E402
    gqa_decode_prepare_ref,
    latent_decode_prepare_ref,
    latent_up_output_ref,
    skinny_linear_ref,
)
from mlra.kernels.testing import rel_error  # noqa: E402
from mlra.layers import rope_inv_freq  # noqa: E402
from mlra.model import Transformer  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEVICE = "cuda" if ON_GPU else "cpu"
BF = torch.bfloat16
TOL = 2e-2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, g, scale=1.0, dtype=BF):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _f32(t):
    return None if t is None else t.float()


# (rows, K, output rows per weight, norm, residual, swiglu)
if ON_GPU:  # the paper's projections: q/kv down, wq_b, wo + residual, gate/up, down
    SKINNY = [(1, 3072, (1024, 576), True, False, False), (1, 1024, (4608,), True, False, False),
              (1, 1536, (4608,), True, False, False),  # MLA's q up
              (8, 3072, (3072,), False, True, False), (1, 3072, (9880, 9880), True, False, True),
              (32, 9880, (3072,), False, True, False), (1, 9880, (3072,), False, True, False),
              (64, 3072, (3072, 768, 768), True, False, False),
              (32, 3072, (1024, 576), True, False, False), (32, 3072, (9880, 9880), True, False,
                                                           True)]
else:
    SKINNY = [(1, 96, (40,), False, False, False), (3, 200, (64, 48, 30), True, False, False),
              (5, 160, (72,), False, True, False), (2, 128, (100, 100), True, False, True),
              (17, 64, (24,), True, True, False), (1, 160, (50, 20), True, False, False),
              (1, 128, (70, 70), True, False, True), (1, 64, (30,), False, True, False)]


@needs_triton
@pytest.mark.parametrize("case", SKINNY, ids=lambda c: f"M{c[0]}-K{c[1]}-{len(c[2])}w")
@pytest.mark.parametrize("split", [None, 1, 3])
@pytest.mark.parametrize("lane_sums", [True, False], ids=["lane-sums", "tile-sums"])
def test_skinny_linear_matches_reference(case, split, lane_sums):
    from mlra.kernels.triton_skinny import SkinnyConfig, skinny_linear_triton

    M, K, ns, norm, res, swiglu = case
    g = _gen(M * 1000 + K)
    x = _randn(M, K, g=g)
    ws = [_randn(n, K, g=g, scale=K ** -0.5) for n in ns]
    nw = _randn(K, g=g, scale=0.2) + 1.0 if norm else None
    r = _randn(M, ns[0], g=g) if res else None
    kw = dict(norm_weight=nw, eps=1e-6, in_scale=1.7 if norm else 1.0, swiglu=swiglu)
    cfg = SkinnyConfig(lane_sums=lane_sums) if split is None else SkinnyConfig(
        block_n=32 if not ON_GPU else None, block_k=32 if not ON_GPU else None, split_k=split,
        lane_sums=lane_sums)
    for _ in range(2):  # twice: the split-K arrival counters must be left at zero
        out = skinny_linear_triton(x, ws, residual=r, config=cfg, **kw)
        ref = skinny_linear_ref(x.float(), [w.float() for w in ws], residual=_f32(r),
                                **{**kw, "norm_weight": _f32(nw)})
        assert len(out) == len(ref)
        for o, e in zip(out, ref, strict=True):
            assert o.dtype == BF and o.shape == e.shape
            assert not torch.isnan(o).any()
            assert rel_error(o.float(), e) < TOL


@needs_triton
@pytest.mark.parametrize("lane_sums", [True, False], ids=["lane-sums", "tile-sums"])
def test_one_row_tile_wider_than_the_inputs_is_masked(lane_sums):
    """The tuned one-row entries load all of K in one tile of the next power of two (K = 3072
    in 4096, 1536 in 2048): the masked tail must add nothing."""
    from mlra.kernels.triton_skinny import SkinnyConfig, skinny_linear_triton

    K, n = (1536, 4608) if ON_GPU else (96, 40)
    g = _gen(K + n)
    x = _randn(1, K, g=g)
    w = _randn(n, K, g=g, scale=K ** -0.5)
    nw = _randn(K, g=g, scale=0.2) + 1.0
    cfg = SkinnyConfig(block_n=8, block_k=128 if not ON_GPU else 2048, num_stages=1,
                       lane_sums=lane_sums, waves=2)
    (out,) = skinny_linear_triton(x, [w], norm_weight=nw, eps=1e-6, config=cfg)
    (ref,) = skinny_linear_ref(x.float(), [w.float()], norm_weight=nw.float(), eps=1e-6)
    assert rel_error(out.float(), ref) < TOL


@needs_triton
@pytest.mark.parametrize("rows", [1, 3])
def test_skinny_linear_rounds_an_fp32_input_like_the_reference(rows):
    """fp32 head outputs feed the bf16 output projection directly (no cast launch)."""
    from mlra.kernels.triton_skinny import skinny_linear_triton

    g = _gen(rows)
    x = torch.randn(rows, 96, generator=g).to(DEVICE)
    w = _randn(40, 96, g=g)
    r = _randn(rows, 40, g=g)
    (out,) = skinny_linear_triton(x, [w], residual=r)
    (same,) = skinny_linear_triton(x.to(BF), [w], residual=r)
    (ref,) = skinny_linear_ref(x, [w], residual=r)
    assert out.dtype == BF and rel_error(out.float(), same.float()) < 1e-2
    assert rel_error(out.float(), ref.float()) < TOL


@needs_triton
def test_tuned_launch_parameters_are_looked_up_by_device_and_nearest_shape(tmp_path,
                                                                            monkeypatch):
    from mlra.kernels import triton_skinny as ts

    key = ts.tuning_key(1, 3072, [9880, 9880], True)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"GPU-X": {key: {"block_n": 16, "block_k": 512}}}))
    monkeypatch.setenv(ts.TUNED_ENV, str(path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU-X")
    cuda = torch.device("cuda")
    assert ts.tuned_config(cuda, 1, 3072, [9880, 9880], True) == {"block_n": 16, "block_k": 512}
    assert ts.tuned_config(cuda, 1, 3072, [9448, 9448], True)["block_n"] == 16  # nearest N
    assert ts.tuned_config(cuda, 1, 3072, [9448], False) is None  # another kind
    assert ts.tuned_config(cuda, 16, 3072, [9880, 9880], True) is None  # another row count
    assert ts.tuned_config(torch.device("cpu"), 1, 3072, [9880, 9880], True) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU-Y")
    assert ts.tuned_config(cuda, 1, 3072, [9880, 9880], True) is None
    # the same lookup without a device (step_tune's register report): own, nearest, none
    table = {key: {"block_n": 16}, ts.tuning_key(1, 3072, [1024, 576], False): {"block_n": 4}}
    assert ts.table_entry(table, 1, 3072, [9880, 9880], True) == {"block_n": 16}
    assert ts.table_entry(table, 1, 3072, [1536, 576], False) == {"block_n": 4}
    assert ts.table_entry(table, 1, 1536, [1536, 576], False) is None  # another K
    assert ts.table_entry({}, 1, 3072, [1024, 576], False) is None


def test_rows_above_16_take_the_kernel_only_for_shapes_tuned_on_this_gpu(tmp_path, monkeypatch):
    from mlra.kernels import skinny_supports
    from mlra.kernels.triton_skinny import TUNED_ENV, tuned_for_rows

    cfg = {"block_n": 32, "block_k": 64, "num_stages": 3, "num_warps": 4, "waves": 2}
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"Fake GPU": {"m32:k64:n24x8:plain": cfg,
                                             "m16:k64:n99:plain": cfg}}))
    monkeypatch.setenv(TUNED_ENV, str(path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    gpu = torch.device("cuda")
    assert tuned_for_rows(gpu, 32, 64, [24, 8], False)
    assert tuned_for_rows(gpu, 17, 64, [24, 8], False)  # the same 32-row block
    assert not tuned_for_rows(gpu, 33, 64, [24, 8], False)  # a 64-row block: not tuned
    assert not tuned_for_rows(gpu, 32, 64, [24, 8], True)
    assert not tuned_for_rows(gpu, 32, 64, [24], False)
    assert not tuned_for_rows(gpu, 32, 128, [24, 8], False)
    assert not tuned_for_rows(torch.device("cpu"), 32, 64, [24, 8], False)
    # up to 16 rows every supported shape runs the kernel; above, only tuned ones
    ws = [torch.zeros(24, 64, dtype=BF), torch.zeros(8, 64, dtype=BF)]
    assert skinny_supports(torch.zeros(16, 64, dtype=BF), ws)
    assert not skinny_supports(torch.zeros(32, 64, dtype=BF), ws)  # a CPU tensor
    assert not skinny_supports(torch.zeros(65, 64, dtype=BF), ws)


def test_skinny_reference_checks_its_arguments():
    x = torch.randn(2, 8)
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="gate, up"):
        skinny_linear_ref(x, [w], swiglu=True)
    with pytest.raises(ValueError, match="single plain output"):
        skinny_linear_ref(x, [w, w], residual=torch.randn(2, 4))


def _latent_case(seed, B, T, nb, G, Hg, w, d, r, pages=8, page=16):
    g = _gen(seed)
    L, H = nb * G, G * Hg
    q = _randn(B, T, H * (d + r), g=g)
    c_kv = _randn(B, T, L * w + r, g=g)
    positions = torch.randint(0, 200_000, (B, T), generator=g).to(DEVICE)
    kv_norm = _randn(L, w, g=g, scale=0.2) + 1.0
    w_up = _randn(L, w, Hg * 2 * d, g=g, scale=w ** -0.5)
    pool = torch.full((pages, page, L * w + r), float("nan"), dtype=BF, device=DEVICE)
    slots = torch.randperm(pages * page, generator=g)[: B * T].to(DEVICE)
    return q, c_kv, positions, rope_inv_freq(r, 10000.0, DEVICE), kv_norm, w_up, pool, slots


# (B, T, branches, groups, heads per group, w, d, r); from 4 tokens (B x T) the kernels take
# blocks of tokens through matrix products (triton_step.ROW_BLOCK_MIN)
LATENT = ([(2, 1, 4, 1, 24, 128, 128, 64), (1, 2, 1, 1, 24, 512, 128, 64),
           (3, 1, 2, 2, 12, 128, 128, 64), (32, 1, 4, 1, 24, 128, 128, 64),
           (5, 4, 1, 1, 24, 512, 128, 64), (70, 1, 2, 2, 12, 128, 128, 64)] if ON_GPU else
          [(2, 1, 4, 1, 3, 16, 16, 8), (1, 2, 1, 2, 2, 24, 16, 8), (2, 2, 2, 2, 2, 8, 32, 16),
           (5, 1, 4, 1, 3, 16, 16, 8), (3, 3, 2, 2, 2, 24, 32, 16), (17, 1, 1, 1, 2, 8, 16, 8),
           (1, 1, 2, 2, 2, 160, 16, 8)])  # one token, two 128-wide blocks of the latent


@needs_triton
@pytest.mark.parametrize("shape", LATENT, ids=lambda s: f"B{s[0]}T{s[1]}nb{s[2]}G{s[3]}w{s[5]}")
def test_latent_prepare_and_up_output_match_reference(shape, monkeypatch):
    from mlra.kernels.triton_step import (
        PRELOAD_ENV,
        latent_decode_prepare_triton,
        latent_up_output_triton,
    )

    B, T, nb, G, Hg, w, d, r = shape
    q, c_kv, pos, inv_freq, kv_norm, w_up, pool, slots = _latent_case(7, *shape)
    ref_pool = pool.float().clone()
    e_abs, e_rope = latent_decode_prepare_ref(q.float(), c_kv.float(), pos, inv_freq,
                                              kv_norm.float(), 1.3, w_up.float(), ref_pool,
                                              slots, nb, d, 1e-6)
    z = torch.randn(B, T, nb, G, Hg, w, generator=_gen(3)).to(DEVICE)
    e = latent_up_output_ref(z, w_up.float(), 0.5, d)
    outputs = []
    # 0: weight slices prefetched; 1: one token's W_UV slice loaded into registers before the
    # PDL wait -- the same products, so the same bits
    for preload in ("0", "1"):
        monkeypatch.setenv(PRELOAD_ENV, preload)
        q_abs, q_rope = latent_decode_prepare_triton(q, c_kv, pos, inv_freq, kv_norm, 1.3,
                                                     w_up, pool, slots, nb, d, 1e-6)
        assert q_abs.shape == e_abs.shape and q_rope.shape == e_rope.shape
        assert rel_error(q_abs.float(), e_abs) < TOL
        assert rel_error(q_rope.float(), e_rope) < TOL
        flat, ref_flat = pool.view(-1, pool.shape[-1]), ref_pool.view(-1, pool.shape[-1])
        assert rel_error(flat[slots].float(), ref_flat[slots]) < TOL
        others = torch.ones(flat.shape[0], dtype=torch.bool, device=DEVICE)
        others[slots] = False
        assert torch.isnan(flat[others]).all(), "a row other than the new tokens' was written"
        o = latent_up_output_triton(z, w_up, 0.5, d)
        assert o.dtype == BF and o.shape == e.shape == (B, T, G * Hg * d)
        assert rel_error(o.float(), e) < TOL
        outputs.append((q_abs, q_rope, o))
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)


SWITCHES = [("PRELOAD_ENV", "preload_w_uv"), ("EARLY_NEXT_ENV", "up_early_next")]


@needs_triton
@pytest.mark.parametrize("env,switch", SWITCHES)
@pytest.mark.parametrize("value,expected", [(None, True), ("", True), ("1", True), (" 1 ", True),
                                            ("0", False), (" 0 ", False)])
def test_w_uv_switches_are_on_by_default_and_follow_the_environment(env, switch, value,
                                                                    expected, monkeypatch):
    """The one-token W_UV launch's preload and early trigger (``MLRA_STEP_PRELOAD``,
    ``MLRA_STEP_UP_EARLY_NEXT``)."""
    from mlra.kernels import triton_step

    name = getattr(triton_step, env)
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    assert getattr(triton_step, switch)() is expected


@needs_triton
@pytest.mark.parametrize("env,switch", SWITCHES)
@pytest.mark.parametrize("value", ["w_uv", "true", "2"])
def test_unknown_switch_value_is_refused_by_name(env, switch, value, monkeypatch):
    from mlra.kernels import triton_step

    name = getattr(triton_step, env)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}='{value}': expected one of '1', '0'"):
        getattr(triton_step, switch)()


@needs_triton
@pytest.mark.parametrize("heads", [(24, 6, 128), (4, 2, 16)] if ON_GPU else [(4, 2, 16),
                                                                              (3, 1, 8)])
def test_gqa_prepare_matches_reference(heads):
    from mlra.kernels.triton_step import gqa_decode_prepare_triton

    H, Hkv, d = heads
    g = _gen(11)
    B, T, pages, page = 3, 2, 5, 16
    q, k, v = (_randn(B, T, n * d, g=g) for n in (H, Hkv, Hkv))
    pos = torch.randint(0, 200_000, (B, T), generator=g).to(DEVICE)
    inv_freq = rope_inv_freq(d, 10000.0, DEVICE)
    pools = [torch.full((pages, page, Hkv, d), float("nan"), dtype=BF, device=DEVICE)
             for _ in range(2)]
    ref_pools = [p.float().clone() for p in pools]
    slots = torch.randperm(pages * page, generator=g)[: B * T].to(DEVICE)
    out = gqa_decode_prepare_triton(q, k, v, pos, inv_freq, *pools, slots, d)
    ref = gqa_decode_prepare_ref(q.float(), k.float(), v.float(), pos, inv_freq, *ref_pools,
                                 slots, d)
    assert rel_error(out.float(), ref) < TOL
    for p, e in zip(pools, ref_pools, strict=True):
        flat, ref_flat = p.view(-1, Hkv, d), e.view(-1, Hkv, d)
        assert rel_error(flat[slots].float(), ref_flat[slots]) < TOL
        assert torch.isnan(flat).sum() == flat.numel() - slots.numel() * Hkv * d


@needs_triton
@pytest.mark.parametrize("T", [1, 2, 5])
def test_decode_slots_match_reference(T):
    from mlra.kernels.reference import decode_slots_ref
    from mlra.kernels.triton_step import decode_slots_triton

    table = torch.randperm(40, generator=_gen(T))[:30].view(3, 10).to(torch.int32).to(DEVICE)
    lens = torch.tensor([T, 70, 159], dtype=torch.int32, device=DEVICE)
    pos, slots = decode_slots_triton(lens, table, T, 16)
    ref_pos, ref_slots = decode_slots_ref(lens, table, T, 16)
    assert torch.equal(pos, ref_pos) and torch.equal(slots, ref_slots)


FUSED_VARIANTS = ["mla", "gla_2", "gla_4", "mlra_2", "mlra_4", "gqa", "mha", "mqa"]


def _decode_logits(model, fused, dtype, device, one_row: bool = False):
    """Logits of two decode steps (one and two new tokens each) of three sequences, or
    (``one_row``) three steps of one new token of one sequence: the batch-1 kernels."""
    cache = PagedKVCache.for_model(model, max_tokens=256, page_size=16, dtype=dtype,
                                   device=device)
    dec = Decoder(model, cache, fused=fused)
    if one_row:
        sid = dec.add_sequence()
        dec.prefill([sid], [[1, 2, 3, 4, 5, 6, 7]])
        return dec.step.fused, [dec.decode([sid], torch.tensor([t])) for t in (11, 12, 13)]
    sids = [dec.add_sequence() for _ in range(3)]
    dec.prefill(sids, [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]])
    steps = [dec.decode(sids, torch.tensor([11, 12, 13])),
             dec.decode(sids, torch.tensor([[14, 15], [16, 17], [18, 19]]))]
    return dec.step.fused, steps


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("ablation", [{}, {"latent_scaling": False}, {"output_gate": True}],
                         ids=["default", "no-latent-scaling", "output-gate"])
def test_fused_step_equals_module_step_fp32(name, ablation):
    """On a CPU the fused forms run the references: the same numbers as the module forms, for
    every variant and ablation (those without a fused form run the module forms)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset(name, "tiny", zero_init_output=False, **ablation)
    model = Transformer(cfg).float().eval()
    used, fused = _decode_logits(model, True, torch.float32, "cpu")
    assert used == (name in FUSED_VARIANTS and not ablation.get("output_gate"))
    _, plain = _decode_logits(model, False, torch.float32, "cpu")
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_step_through_a_weak_proxy_of_the_model():
    """generate() keeps its decoder with a weak proxy of the model: the fused head still
    applies (the proxy's type is not the model's)."""
    import weakref

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("mlra_4", "tiny", zero_init_output=False)).eval()
    _, direct = _decode_logits(model, True, torch.float32, "cpu")
    _, proxied = _decode_logits(weakref.proxy(model), True, torch.float32, "cpu")
    for a, b in zip(direct, proxied, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fused_forms_are_skipped_for_an_output_gate():
    cfg = ModelConfig.preset("mlra_4", "tiny", output_gate=True)
    model = Transformer(cfg).eval()
    used, _ = _decode_logits(model, True, torch.float32, "cpu")
    assert not used


@pytest.mark.skipif(not ON_GPU, reason="bf16 Triton decode step on a GPU")
@pytest.mark.parametrize("name", FUSED_VARIANTS)
@pytest.mark.parametrize("one_row", [False, True], ids=["batch3", "batch1"])
def test_fused_bf16_step_tracks_fp32_reference_on_gpu(name, one_row):
    """The fused bf16 step (Triton) against the module step in fp32: logits within bf16
    rounding of the fp32 ones, as close as the module step's own bf16 run (batch 1: the
    one-row kernels, the output projection inside the MLP kernel among them)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset(name, "small", zero_init_output=False)
    model = Transformer(cfg).to(DEVICE).eval()
    _, ref = _decode_logits(model, False, torch.float32, DEVICE, one_row)
    model16 = model.to(BF)
    used, fused = _decode_logits(model16, True, BF, DEVICE, one_row)
    _, plain = _decode_logits(model16, False, BF, DEVICE, one_row)
    assert used
    for f, p, e in zip(fused, plain, ref, strict=True):
        err_fused, err_plain = rel_error(f.float(), e), rel_error(p.float(), e)
        assert err_fused < max(2 * err_plain, 1e-2), (err_fused, err_plain)
