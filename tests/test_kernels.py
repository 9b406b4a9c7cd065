"""Triton paged decode kernels against the torch references.

Without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1) at small sizes; on a
CUDA machine the same tests run compiled at real sizes (paper shapes, long ragged contexts).
Every case uses a random page table, NaN in every cache row a sequence does not own, poisoned
block-table entries past each sequence's pages, NaN-prefilled outputs, ragged lengths and, where
noted, several query tokens (causal inside the chunk) and forced split-KV.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from mlra.kernels import (  # noqa: E402
    gqa_kernel_supports,
    latent_kernel_supports,
    paged_gqa_decode,
    paged_latent_decode,
    use_triton,
)
from mlra.kernels.reference import paged_gqa_decode_ref, paged_latent_decode_ref  # noqa: E402
from mlra.kernels.testing import (  # noqa: E402
    assert_decode_matches,
    random_gqa_case,
    random_latent_case,
    rel_error,
)
from mlra.kernels.triton_gqa import GQAKernelConfig, paged_gqa_decode_triton  # noqa: E402
from mlra.kernels.triton_latent import (  # noqa: E402
    LatentKernelConfig,
    paged_latent_decode_triton,
)

DEVICE = "cuda" if ON_GPU else "cpu"
OUT_TOL = 1e-2  # relative L2 error of out: bf16 probabilities in P @ V give ~2e-3
LSE_TOL = 2e-3  # absolute error of lse (fp32 logits from bf16 operands)


def _check(out, lse, ref_out, ref_lse):
    assert_decode_matches(out, lse, ref_out, ref_lse, OUT_TOL, LSE_TOL)


def _nan_outputs(shape_out, shape_lse):
    out = torch.full(shape_out, float("nan"), dtype=torch.float32, device=DEVICE)
    lse = torch.full(shape_lse, float("nan"), dtype=torch.float32, device=DEVICE)
    return out, lse


# (streams NB, width W, query heads, Tq, page, lengths, splits, block_n, layout)
if ON_GPU:
    LATENT_CASES = [
        (1, 512, 64, 1, 64, [70001, 4096, 1], None, None, "latents_first"),  # MLA
        (1, 512, 64, 2, 64, [9000, 130], 7, None, "latents_first"),  # MLA, Tq 2
        (1, 256, 32, 1, 64, [33333, 100], None, None, "latents_first"),  # GLA-2 at TP 2
        (1, 128, 64, 1, 64, [131072, 5], None, None, "latents_first"),  # MLRA-4 at TP 4
        (4, 128, 64, 1, 64, [65536, 777], None, None, "latents_first"),  # fused MLRA-4
        (4, 128, 64, 4, 16, [5000, 64], 5, None, "rope_first"),  # fused, Tq 4, page 16
        (2, 128, 32, 1, 48, [20000, 17], None, None, "latents_first"),  # MLRA-2 at TP 2
        (1, 192, 16, 3, 80, [3000, 300], 3, None, "rope_first"),  # odd widths and page
        (1, 64, 128, 1, 32, [4000], None, None, "latents_first"),  # several row blocks
    ]
else:
    LATENT_CASES = [
        (1, 128, 4, 1, 16, [37, 70, 16], None, None, "latents_first"),
        (1, 512, 2, 1, 64, [130, 64], 3, 32, "latents_first"),
        (1, 192, 3, 2, 48, [100, 2, 49], 2, 32, "rope_first"),
        (4, 64, 4, 3, 32, [70, 3, 33], 3, None, "latents_first"),
        (2, 128, 8, 1, 16, [50, 17], None, 32, "rope_first"),
        (1, 64, 20, 2, 16, [40], 2, None, "latents_first"),
    ]


@pytest.mark.parametrize("nb,w,hq,tq,page,lens,splits,block_n,layout", LATENT_CASES)
def test_latent_kernel_matches_reference(nb, w, hq, tq, page, lens, splits, block_n, layout):
    case = random_latent_case(lens, page, tq, nb, hq, w, layout=layout, device=DEVICE,
                              seed=len(lens) * 31 + w)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    out, lse = _nan_outputs(ref_out.shape, ref_lse.shape)
    cfg = LatentKernelConfig(block_n=block_n) if block_n else None
    paged_latent_decode_triton(**case, num_splits=splits, config=cfg, out=out, lse=lse)
    _check(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("use_tma,spp", [(False, 4), (True, 4), (True, 1), (False, 2), (True, 2)])
def test_latent_tma_and_stream_groups(use_tma, spp):
    """TMA and pointer loads, and the streams split over 1, 2 or 4 programs, agree."""
    lens = [75, 20, 3] if not ON_GPU else [40000, 2000, 3]
    heads = 4 if not ON_GPU else 64
    case = random_latent_case(lens, 32, 2, 4, heads, 64, device=DEVICE, seed=11)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    out, lse = _nan_outputs(ref_out.shape, ref_lse.shape)
    cfg = LatentKernelConfig(block_n=16 if not ON_GPU else 32, use_tma=use_tma,
                             streams_per_program=spp)
    paged_latent_decode_triton(**case, config=cfg, num_splits=3, out=out, lse=lse)
    _check(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("use_tma", [False, True])
def test_gqa_tma_and_pointer_loads(use_tma):
    lens = [70, 9] if not ON_GPU else [30000, 9]
    case = random_gqa_case(lens, 32, 2, 8, 2, 64, 64, device=DEVICE, seed=12)
    ref_out, ref_lse = paged_gqa_decode_ref(**case)
    out, lse = _nan_outputs(ref_out.shape, ref_lse.shape)
    cfg = GQAKernelConfig(block_n=16 if not ON_GPU else 32, use_tma=use_tma)
    paged_gqa_decode_triton(**case, config=cfg, num_splits=2, out=out, lse=lse)
    _check(out, lse, ref_out, ref_lse)


def test_gqa_config_from_the_environment_sets_tiles_and_splits(monkeypatch):
    """``MLRA_GQA_CONFIG`` sets the launch parameters (and the split count) of calls without a
    config, for tuning runs of whole steps: the result stays the reference's whatever the
    split count, and a malformed value is refused with a message naming the variable."""
    from mlra.kernels import _triton_common, triton_gqa

    lens = [70, 9] if not ON_GPU else [8192, 9]
    case = random_gqa_case(lens, 32, 1, 8, 2, 64, 64, device=DEVICE, seed=13)
    ref_out, ref_lse = paged_gqa_decode_ref(**case)
    splits = []
    real = _triton_common.split_workspaces
    monkeypatch.setattr(triton_gqa, "split_workspaces",
                        lambda n, out, lse: splits.append(n) or real(n, out, lse))
    for n in (1, 3, 7):
        monkeypatch.setenv(triton_gqa.CONFIG_ENV, f'{{"block_n": 16, "num_splits": {n}}}')
        assert triton_gqa.env_config() == GQAKernelConfig(block_n=16, num_splits=n)
        out, lse = paged_gqa_decode_triton(**case)
        _check(out, lse, ref_out, ref_lse)
    assert splits == [1, 3, 7]
    paged_gqa_decode_triton(**case, num_splits=2)  # an explicit count wins
    assert splits[-1] == 2
    monkeypatch.setenv(triton_gqa.CONFIG_ENV, '{"splits": 4}')
    with pytest.raises(ValueError, match="MLRA_GQA_CONFIG"):
        paged_gqa_decode_triton(**case)


def test_gqa_heuristic_takes_short_tiles_for_short_reads(monkeypatch):
    """Compiled (not interpreted), 128-wide heads: 64-token tiles with two stages when each
    resident program reads at most SHORT_READ_TOKENS cached tokens, else 128 with three; the
    launcher counts the tokens over two programs per multiprocessor."""
    from mlra.kernels import triton_gqa

    monkeypatch.setattr(triton_gqa, "INTERPRET", False)
    short = triton_gqa.default_gqa_config(128, 128, 4, 64, triton_gqa.SHORT_READ_TOKENS)
    long = triton_gqa.default_gqa_config(128, 128, 4, 64, triton_gqa.SHORT_READ_TOKENS + 1)
    assert (short.block_n, short.num_stages) == (64, 2)
    assert (long.block_n, long.num_stages) == (128, 3)
    assert triton_gqa.default_gqa_config(128, 128, 4, 64) == long  # unknown length: long
    wide = triton_gqa.default_gqa_config(256, 256, 4, 64, 10)  # wide heads keep their form
    assert (wide.block_n, wide.num_warps) == (64, 8)
    monkeypatch.undo()
    seen = []
    real = triton_gqa.default_gqa_config
    monkeypatch.setattr(triton_gqa, "default_gqa_config",
                        lambda *a: seen.append(a[-1]) or real(*a))
    case = random_gqa_case([70, 9], 32, 1, 8, 2, 64, 64, device=DEVICE, seed=14)
    ref_out, ref_lse = paged_gqa_decode_ref(**case)
    out, lse = paged_gqa_decode_triton(**case, max_seq_len=96)
    _check(out, lse, ref_out, ref_lse)
    sms = triton_gqa.device_sms(case["k_cache"])
    assert seen == [2 * 2 * 96 / (2 * sms)]  # 2 sequences x 2 KV heads x 96 tokens


def test_latent_more_than_four_streams():
    lens = [40, 9] if not ON_GPU else [5000, 9]
    case = random_latent_case(lens, 16, 1, 5, 4, 64, device=DEVICE, seed=5)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    out, lse = paged_latent_decode_triton(**case, num_splits=2)
    _check(out, lse, ref_out, ref_lse)


def test_latent_split_invariance_and_empty_sequence():
    """Any split factor gives the same result; a sequence with no tokens gives 0 / -inf."""
    lens = [90, 0] if not ON_GPU else [20000, 0]
    case = random_latent_case(lens, 16, 1, 1, 4, 64, device=DEVICE, seed=7)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    results = [paged_latent_decode_triton(**case, num_splits=s) for s in (1, 2, 5)]
    for out, lse in results:
        _check(out, lse, ref_out, ref_lse)
        assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))
    torch.testing.assert_close(results[0][0], results[2][0], atol=2e-3, rtol=0)


@pytest.mark.parametrize("n_splits,config", [
    (3, None),  # one pass
    (300, None),  # more than 256 splits: in blocks
    (9, '{"block_s": 4, "block_d": 16, "num_warps": 2}'),  # set by MLRA_MERGE_CONFIG: 3 passes
])
def test_merge_splits_matches_logsumexp(n_splits, config, monkeypatch):
    """The split merge equals a float64 log-sum-exp combination, with empty splits (LSE
    -inf, partial 0) among them and a row that no split saw (0 / -inf)."""
    from mlra.kernels._triton_common import MERGE_CONFIG_ENV, merge_splits

    if config is not None:
        monkeypatch.setenv(MERGE_CONFIG_ENV, config)

    g = torch.Generator().manual_seed(n_splits)
    rows, d = 5, 40
    o_ws = torch.randn(n_splits, rows, d, generator=g)
    lse_ws = torch.randn(n_splits, rows, generator=g) * 3
    empty = torch.rand(n_splits, rows, generator=g) < 0.3
    lse_ws[empty] = float("-inf")
    o_ws[empty] = 0.0
    lse_ws[:, 2] = float("-inf")
    o_ws[:, 2] = 0.0
    out = torch.full((rows, d), float("nan"))
    lse = torch.full((rows,), float("nan"))
    o_dev, l_dev = o_ws.to(DEVICE), lse_ws.to(DEVICE)
    out, lse = out.to(DEVICE), lse.to(DEVICE)
    merge_splits(o_dev, l_dev, out, lse)
    ref_lse = torch.logsumexp(lse_ws.double(), 0)
    w = torch.exp(lse_ws.double() - torch.nan_to_num(ref_lse, neginf=0.0))
    ref_out = (w[..., None] * o_ws.double()).sum(0) / w.sum(0).clamp_min(1e-300)[:, None]
    torch.testing.assert_close(out.cpu().double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, atol=1e-5, rtol=1e-5)
    assert torch.all(out[2] == 0) and lse[2].item() == float("-inf")


def test_latent_scale_is_used():
    case = random_latent_case([40], 16, 1, 1, 4, 64, device=DEVICE, seed=3)
    a, _ = paged_latent_decode_triton(**case)
    case["scale"] = case["scale"] * 3
    b, _ = paged_latent_decode_triton(**case)
    ref, _ = paged_latent_decode_ref(**case)
    assert rel_error(b, ref) < OUT_TOL and rel_error(a, b) > 10 * OUT_TOL


# (query heads, kv heads, d, dv, Tq, page, lengths, splits, block_n)
if ON_GPU:
    GQA_CASES = [
        (8, 1, 128, 128, 1, 128, [131072, 1000, 1], None, None),  # GQA at TP 8
        (64, 8, 128, 128, 1, 16, [20000, 3000], None, None),  # GQA-8, page 16
        (8, 1, 256, 256, 2, 64, [30000, 5], 9, None),  # head dim 256, Tq 2
        (12, 4, 96, 64, 3, 48, [7000, 3], None, None),  # odd dims and page
        (32, 32, 64, 64, 1, 32, [9000], None, None),  # MHA
    ]
else:
    GQA_CASES = [
        (8, 1, 128, 128, 1, 16, [40, 7, 1], None, None),
        (6, 2, 96, 64, 2, 48, [100, 3], 3, 32),
        (4, 4, 256, 256, 1, 32, [45], 2, None),
        (16, 2, 64, 64, 4, 16, [35, 20], None, 32),
    ]


@pytest.mark.parametrize("hq,hkv,d,dv,tq,page,lens,splits,block_n", GQA_CASES)
def test_gqa_kernel_matches_reference(hq, hkv, d, dv, tq, page, lens, splits, block_n):
    case = random_gqa_case(lens, page, tq, hq, hkv, d, dv, device=DEVICE, seed=hq + d)
    ref_out, ref_lse = paged_gqa_decode_ref(**case)
    out, lse = _nan_outputs(ref_out.shape, ref_lse.shape)
    cfg = GQAKernelConfig(block_n=block_n) if block_n else None
    paged_gqa_decode_triton(**case, num_splits=splits, config=cfg, out=out, lse=lse)
    _check(out, lse, ref_out, ref_lse)


def test_dispatch_uses_triton_only_on_cuda():
    case = random_latent_case([20], 16, 1, 1, 2, 64, device=DEVICE, seed=1)
    assert use_triton(case["cache"]) == ON_GPU
    out, lse = paged_latent_decode(**case)
    ref_out, ref_lse = paged_latent_decode_ref(**case)
    _check(out, lse, ref_out, ref_lse)
    g = random_gqa_case([20], 16, 1, 4, 2, 64, 64, device=DEVICE, seed=2)
    out, lse = paged_gqa_decode(**g)
    ref_out, ref_lse = paged_gqa_decode_ref(**g)
    _check(out, lse, ref_out, ref_lse)


def test_dispatch_sends_unsupported_shapes_to_the_reference():
    case = random_latent_case([20], 16, 1, 1, 2, 64, device=DEVICE, seed=1)
    assert latent_kernel_supports(case["q_latent"], case["q_rope"], case["cache"])
    odd_rope = case["q_rope"][..., :48]
    assert not latent_kernel_supports(case["q_latent"], odd_rope, case["cache"])
    assert not latent_kernel_supports(case["q_latent"], case["q_rope"], case["cache"].float())
    g = random_gqa_case([20], 16, 1, 4, 2, 64, 64, device=DEVICE, seed=2)
    assert gqa_kernel_supports(g["q"], g["k_cache"], g["v_cache"])
    assert not gqa_kernel_supports(g["q"], g["k_cache"].float(), g["v_cache"].float())


def test_bad_inputs_are_rejected():
    case = random_latent_case([20], 16, 1, 2, 2, 64, device=DEVICE, seed=1)
    with pytest.raises(ValueError, match="latent_offsets"):
        paged_latent_decode_triton(**{**case, "latent_offsets": [0]})
    with pytest.raises(ValueError, match="exceeds the cache row"):
        paged_latent_decode_triton(**{**case, "rope_offset": 1000})


def test_256_wide_streams_get_five_stages_only_with_hoppers_shared_memory(monkeypatch):
    """The five-stage 256-wide tiles need 164,864 bytes of shared memory: chosen where a block
    may use Hopper's 227 KB, three stages on a GPU with less (an A100's 163 KB)."""
    from mlra.kernels import triton_latent
    from mlra.kernels._triton_common import block_shared_memory

    monkeypatch.setattr(triton_latent, "INTERPRET", False)
    big = triton_latent.default_latent_config(1, 256, 64, 32, 64, large_smem=True)
    small = triton_latent.default_latent_config(1, 256, 64, 32, 64, large_smem=False)
    assert (big.num_stages, big.block_m) == (5, 64)
    assert small.num_stages == 3
    assert triton_latent.default_latent_config(1, 128, 64, 32, 64, large_smem=False) \
        .num_stages == 5  # 128 wide: 5 stages fit everywhere
    assert block_shared_memory(torch.zeros(1)) >= triton_latent.LARGE_SMEM_BYTES
    assert 163 * 1024 < triton_latent.LARGE_SMEM_BYTES <= 227 * 1024


def test_latent_config_from_the_environment_changes_the_launch(monkeypatch):
    """``MLRA_LATENT_CONFIG`` sets the launch parameters of calls without a config (tuning
    runs of whole steps): 32-token tiles (16 by default here) still give the reference's
    result, and a malformed value is refused with a message naming the variable."""
    from mlra.kernels import triton_latent

    torch.manual_seed(0)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    q_lat = torch.randn(1, 1, 1, 5, 32, device=DEVICE, dtype=dtype)
    q_rope = torch.randn(1, 1, 5, 16, device=DEVICE, dtype=dtype)
    cache = torch.randn(6, 32, 48, device=DEVICE, dtype=dtype)
    table = torch.tensor([[3, 1, 4, 0]], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([100], dtype=torch.int32, device=DEVICE)
    ref = paged_latent_decode_ref(q_lat.float(), q_rope.float(), cache.float(), table, lens,
                                  [0], 32, 0.3)
    monkeypatch.setenv(triton_latent.CONFIG_ENV, '{"block_m": 16, "block_n": 32}')
    assert triton_latent.env_config() == triton_latent.LatentKernelConfig(block_m=16,
                                                                          block_n=32)
    out, lse = paged_latent_decode_triton(q_lat, q_rope, cache, table, lens, [0], 32, 0.3)
    _check(out, lse, *ref)
    splits = []
    real = triton_latent.split_workspaces
    monkeypatch.setattr(triton_latent, "split_workspaces",
                        lambda n, o, s: splits.append(n) or real(n, o, s))
    monkeypatch.setenv(triton_latent.CONFIG_ENV, '{"block_n": 32, "num_splits": 3}')
    out, lse = paged_latent_decode_triton(q_lat, q_rope, cache, table, lens, [0], 32, 0.3)
    _check(out, lse, *ref)
    assert splits == [3]
    monkeypatch.setenv(triton_latent.CONFIG_ENV, '{"block_rows": 16}')
    with pytest.raises(ValueError, match="MLRA_LATENT_CONFIG"):
        paged_latent_decode_triton(q_lat, q_rope, cache, table, lens, [0], 32, 0.3)


def _decode_call(kind: str):
    """A small case of one split-KV decode launcher and the launcher."""
    from mlra.kernels.testing import random_gqa_case, random_tpa_case
    from mlra.kernels.triton_tpa import paged_tpa_decode_triton

    if kind == "latent":
        return random_latent_case([40, 9], 16, 1, 2, 3, 32, device=DEVICE), \
            paged_latent_decode_triton, "q_latent"
    if kind == "gqa":
        return random_gqa_case([40, 9], 16, 1, 4, 2, 32, 32, device=DEVICE), \
            paged_gqa_decode_triton, "q"
    return random_tpa_case([40, 9], 16, 1, 3, 2, 32, device=DEVICE), paged_tpa_decode_triton, "q"


@pytest.mark.parametrize("kind", ["latent", "gqa", "tpa"])
def test_decode_launchers_share_output_rules(kind):
    """Every split-KV decode launcher: outputs it allocates are fp32 and contiguous; given ones
    are written in place; a non-contiguous one is refused by name; a call without query rows
    returns empty outputs without launching."""
    case, launch, q_name = _decode_call(kind)
    out, lse = launch(**case)
    assert out.dtype == lse.dtype == torch.float32 and out.is_contiguous()
    given = torch.full_like(out, float("nan")), torch.full_like(lse, float("nan"))
    got = launch(**case, out=given[0], lse=given[1])
    assert got[0] is given[0] and got[1] is given[1]
    torch.testing.assert_close(given[0], out, atol=1e-6, rtol=0)
    strided = torch.empty(out.shape[::-1], dtype=torch.float32, device=DEVICE).permute(
        *reversed(range(out.dim())))
    with pytest.raises(ValueError, match="contiguous"):
        launch(**case, out=strided, lse=torch.empty_like(lse))
    no_rows = dict(case)
    no_rows[q_name] = case[q_name][:, :0]
    if kind == "latent":
        no_rows["q_rope"] = case["q_rope"][:, :0]
    out0, lse0 = launch(**no_rows)
    assert out0.shape == (out.shape[0], 0, *out.shape[2:]) and lse0.numel() == 0
