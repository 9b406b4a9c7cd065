"""The Triton TPA decode kernel (attention straight from the cached tensor-product factors)
against its torch reference, and the reference against attention over explicitly formed K/V.

Without CUDA the kernel runs in the Triton interpreter at small sizes; on a CUDA machine the
same tests run compiled at paper sizes (24 heads, rank 2, head dim 128, long ragged contexts).
Every case uses a random page table, NaN in every cache row a sequence does not own, poisoned
block-table entries past each sequence's pages and NaN-prefilled outputs.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from conftest import tiny_model

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import mlra  # noqa: E402
from mlra.cache import PagedKVCache  # noqa: E402
from mlra.decoding import Decoder  # noqa: E402
from mlra.kernels import paged_tpa_decode, tpa_kernel_supports, use_triton  # noqa: E402
from mlra.kernels.reference import paged_gqa_decode_ref, paged_tpa_decode_ref  # noqa: E402
from mlra.kernels.testing import assert_decode_matches, random_tpa_case, rel_error  # noqa: E402
from mlra.kernels.triton_tpa import TPAKernelConfig, paged_tpa_decode_triton  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
OUT_TOL = 1e-2  # relative L2 error of out: P * A_v rounded to bf16 for the product gives ~2e-3
LSE_TOL = 2e-3  # absolute error of lse (fp32 logits from bf16 operands)


def _check(out, lse, ref_out, ref_lse):
    assert_decode_matches(out, lse, ref_out, ref_lse, OUT_TOL, LSE_TOL)


def _run(case, **kwargs):
    ref_out, ref_lse = paged_tpa_decode_ref(**case)
    out = torch.full(ref_out.shape, float("nan"), device=DEVICE)
    lse = torch.full(ref_lse.shape, float("nan"), device=DEVICE)
    paged_tpa_decode_triton(**case, out=out, lse=lse, **kwargs)
    _check(out, lse, ref_out, ref_lse)
    return out, lse


# (heads, rank, head dim, Tq, page, lengths, splits, block_n)
if ON_GPU:
    CASES = [
        (24, 2, 128, 1, 64, [70001, 4096, 1], None, None),  # paper TPA
        (24, 2, 128, 2, 16, [9000, 130], 7, None),  # Tq 2, page 16
        (6, 2, 128, 1, 64, [131072, 5], None, None),  # TP 4
        (40, 3, 96, 2, 64, [20000, 17], None, 32),  # two row blocks, odd dims
    ]
else:
    CASES = [
        (4, 2, 32, 1, 16, [37, 70, 16], None, None),  # ragged, one split
        (6, 2, 64, 2, 64, [100, 3, 49], 3, None),  # Tq 2, page 64 (tiles span pages)
        (6, 2, 64, 1, 64, [130, 64], 2, 32),  # page 64, 32-token tiles
        (5, 3, 48, 2, 16, [40, 2], 2, 32),  # rank 3, padded head dim, tiles span pages
        (40, 2, 16, 2, 16, [33], None, None),  # 80 rows: two row blocks
    ]


@pytest.mark.parametrize("h,rank,d,tq,page,lens,splits,block_n", CASES)
def test_tpa_kernel_matches_reference(h, rank, d, tq, page, lens, splits, block_n):
    case = random_tpa_case(lens, page, tq, h, rank, d, device=DEVICE, seed=h * 7 + d)
    cfg = TPAKernelConfig(block_n=block_n) if block_n else None
    _run(case, num_splits=splits, config=cfg)


def test_split_invariance_and_empty_sequence():
    """Any split factor gives the same result; a sequence with no tokens gives 0 / -inf."""
    lens = [90, 0] if not ON_GPU else [20000, 0]
    case = random_tpa_case(lens, 16, 1, 4, 2, 32, device=DEVICE, seed=3)
    results = [_run(case, num_splits=s) for s in (1, 2, 5)]
    for out, lse in results:
        assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))
    torch.testing.assert_close(results[0][0], results[2][0], atol=2e-3, rtol=0)


def test_scales_are_used():
    case = random_tpa_case([40], 16, 1, 4, 2, 32, device=DEVICE, seed=4)
    a, _ = paged_tpa_decode_triton(**case)
    b, _ = paged_tpa_decode_triton(**{**case, "scale": case["scale"] * 3})
    c, _ = paged_tpa_decode_triton(**{**case, "value_scale": case["value_scale"] * 3})
    ref_b, _ = paged_tpa_decode_ref(**{**case, "scale": case["scale"] * 3})
    assert rel_error(b, ref_b) < OUT_TOL and rel_error(a, b) > 10 * OUT_TOL
    assert rel_error(c, 3 * a) < 1e-5


@pytest.mark.parametrize("tq", [1, 2])
def test_reference_equals_attention_over_formed_kv(tq):
    """The factor algebra: the reference (fp64) equals attention over K = sum_r a_k b_k and
    V = value_scale * sum_r a_v b_v formed explicitly (the GQA reference, fp32, every head its
    own K/V head)."""
    case = random_tpa_case([21, 40, 5], 16, tq, 3, 2, 16, dtype=torch.float64, seed=6)
    out, lse = paged_tpa_decode_ref(**case)
    k = torch.einsum("pshr,psrd->pshd", case["a_k"], case["b_k"])
    v = torch.einsum("pshr,psrd->pshd", case["a_v"], case["b_v"]) * case["value_scale"]
    ref_out, ref_lse = paged_gqa_decode_ref(case["q"], k, v, case["block_table"],
                                            case["seq_lens"], case["scale"])
    assert out.dtype == torch.float64  # the GQA reference computes in fp32
    assert rel_error(out, ref_out) < 1e-6
    torch.testing.assert_close(lse.double(), ref_lse.double(), rtol=0, atol=1e-5)


def test_dispatch_and_supported_shapes():
    case = random_tpa_case([20, 7], 16, 2, 4, 2, 32, device=DEVICE, seed=2)
    assert use_triton(case["b_k"]) == ON_GPU
    assert tpa_kernel_supports(case["q"], case["a_k"], case["b_k"], case["a_v"], case["b_v"])
    f32 = {n: case[n].float() for n in ("a_k", "b_k", "a_v", "b_v")}
    assert not tpa_kernel_supports(case["q"], **f32)
    out, lse = paged_tpa_decode(**case)
    _check(out, lse, *paged_tpa_decode_ref(**case))


def test_bad_inputs_are_rejected():
    case = random_tpa_case([20], 16, 1, 4, 2, 32, device=DEVICE, seed=1)
    with pytest.raises(ValueError, match="do not match"):
        paged_tpa_decode_triton(**{**case, "q": case["q"][..., :16]})
    with pytest.raises(ValueError, match="differ in shape"):
        paged_tpa_decode_triton(**{**case, "a_v": case["a_v"][..., :1]})
    with pytest.raises(ValueError, match="int32"):
        paged_tpa_decode_triton(**{**case, "seq_lens": case["seq_lens"].long()})


def test_tpa_model_decodes_through_the_kernel(monkeypatch):
    """TPA's paged_attend wired to the kernel: a bf16-cache decode step of a small model gives
    the logits of the same step through the reference (bf16 model and cache, NaN free pages)."""
    model = tiny_model("tpa", dtype=torch.bfloat16, n_layers=2).to(DEVICE)
    ids = torch.randint(0, model.config.vocab_size, (2, 21), device=DEVICE)

    def step(kernel):
        calls = []

        def spy(*args):
            calls.append(args[0].shape)
            return kernel(*args)

        monkeypatch.setattr(mlra.kernels, "paged_tpa_decode", spy)
        cache = PagedKVCache.for_model(model, 128, 16, fill_value=float("nan"))
        dec = Decoder(model, cache)
        sids = [dec.add_sequence(), dec.add_sequence()]
        dec.prefill(sids, [ids[0, :19], ids[1, :6]])
        calls.clear()
        logits = dec.decode(sids, ids[:, 19:21])  # Tq 2, ragged lengths 21 and 8
        assert calls == [(2, 2, model.config.n_heads, model.config.head_dim)] * 2
        return logits

    with torch.no_grad():
        got = step(paged_tpa_decode_triton)
        ref = step(paged_tpa_decode_ref)
    assert not torch.isnan(got).any()
    assert rel_error(got, ref) < 1e-2
