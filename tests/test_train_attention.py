"""The fused Triton training attention of the latent family against the references.

Without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1) at small sizes; on a
CUDA machine the same tests run compiled (and the model's ``attend`` itself takes the fused path,
checked against its SDPA path). Forward outputs and every gradient (q_nope, q_rope, each branch's
k_nope / v, the shared RoPE key) are compared with an fp64 computation on the same bf16 inputs,
and the kernel's error must be no worse than the SDPA path's bf16 error (plus a small margin).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from mlra import ModelConfig  # noqa: E402
from mlra.attention.latent import LatentAttention  # noqa: E402
from mlra.kernels import latent_train_attention, train_kernel_supports  # noqa: E402
from mlra.kernels.reference import latent_train_attention_ref  # noqa: E402
from mlra.kernels.testing import rel_error  # noqa: E402
from mlra.kernels.train_ops import (  # noqa: E402
    latent_train_attention_fused,
    latent_train_attention_up_fused,
)
from mlra.layers import Rotary  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
TOL = 1e-2  # relative L2 error against fp64: bf16 probabilities / dS in the products give ~5e-3


def _inputs(B, T, H, HKV, NB, D, R, DV, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D + R, generator=g)
    kv = torch.randn(B, T, NB, HKV, D + DV, generator=g)
    kr = torch.randn(B, T, R, generator=g)
    return [t.to(DEVICE, torch.bfloat16) for t in (q, kv, kr)]


def _run(fn, q, kv, kr, D, scale, out_scale, grad, dtype):
    """fn on views of leaf copies of (q, kv, kr) in ``dtype``; returns out and the 3 grads."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, kv, kr)]
    q_, kv_, kr_ = leaves
    o = fn(q_[..., :D], q_[..., D:], kv_, kr_, scale, out_scale)
    o.backward(grad.to(dtype))
    return [o] + [t.grad for t in leaves]


# (batch, time, query heads, KV heads, branches, head dim, rope dim, value dim)
if ON_GPU:
    CASES = [
        (2, 1000, 16, 16, 4, 128, 64, 128),  # MLRA-4 at 1B widths, odd length
        (1, 777, 16, 16, 1, 128, 64, 128),  # MLA
        (1, 515, 8, 8, 2, 128, 64, 128),  # MLRA-2
        (1, 300, 16, 4, 2, 64, 32, 64),  # GQA-shaped KV heads
    ]
else:
    CASES = [
        (1, 37, 2, 2, 4, 32, 16, 32),  # MLRA-4, odd length
        (2, 33, 2, 2, 1, 32, 16, 32),  # MLA, a partial last tile
        (1, 40, 4, 2, 2, 16, 32, 16),  # two query heads per KV head, rope wider than nope
        (1, 16, 2, 2, 3, 16, 16, 32),  # three branches (chunks of one branch), Dv != D
    ]


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case):
    B, T, H, HKV, NB, D, R, DV = case
    q, kv, kr = _inputs(*case, seed=T)
    scale, out_scale = (D + R) ** -0.5, NB**-0.5
    grad = torch.randn(B, T, H, DV, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref = _run(latent_train_attention_ref, q, kv, kr, D, scale, out_scale, grad, torch.float64)
    got = _run(latent_train_attention_fused, q, kv, kr, D, scale, out_scale, grad,
               torch.bfloat16)
    for name, a, b in zip(("out", "d_q", "d_kv", "d_k_rope"), got, ref, strict=True):
        a, b = a.detach(), b.detach()
        assert a.dtype == torch.bfloat16 and a.shape == b.shape, name
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err = rel_error(a.float(), b.float())
        assert err < TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("per_program", [1, 4])
def test_kernel_branch_chunking(per_program):
    """Every chunking of the branches (RoPE scores shared by 1 or all 4 branches of a tile, in
    the forward and the dQ pass) gives the same output and gradients as the reference."""
    from mlra.kernels import triton_latent_train as k

    B, T, H, NB, D, R = 1, 35, 2, 4, 16, 16
    q, kv, kr = _inputs(B, T, H, H, NB, D, R, D, seed=5)
    cfg = dataclasses.replace(k.default_config(NB), branches_per_program=per_program,
                              dq_branches_per_program=per_program)
    scale, out_scale = 0.2, 0.5
    grad = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ref = _run(latent_train_attention_ref, q, kv, kr, D, scale, out_scale, grad, torch.float64)
    args = (q[..., :D], q[..., D:], kv, kr)
    o, ob, lse = k.forward(*args, scale, out_scale, config=cfg)
    dq_n, dq_r, dkv, dkr = k.backward(grad.to(torch.bfloat16), *args, o, ob, lse, scale,
                                      out_scale, config=cfg)
    got = [o, torch.cat([dq_n, dq_r], -1), dkv, dkr]
    for name, a, b in zip(("out", "d_q", "d_kv", "d_k_rope"), got, ref, strict=True):
        err = rel_error(a.float(), b.detach().float())
        assert err < TOL, f"{name}: relative error {err:.2e}"


def test_config_refuses_tile_pairs_the_causal_split_cannot_use():
    """A tile pair that does not divide (which would give wrong gradients) is refused."""
    from mlra.kernels import triton_latent_train as k

    with pytest.raises(ValueError, match="dkv_block_n must be a multiple of dkv_block_m"):
        k.TrainKernelConfig(dkv_block_m=64, dkv_block_n=32)
    with pytest.raises(ValueError, match="fwd_block_m must be a multiple of fwd_block_n"):
        k.TrainKernelConfig(fwd_block_m=48, fwd_block_n=32)
    k.TrainKernelConfig(dq_block_m=128, dq_block_n=64)  # a valid pair


def test_kernel_sensitive_to_every_input():
    """A perturbation of one branch's key, the RoPE key or a late query changes exactly what
    causality says it should (catches swapped strides / branches and wrong causal limits)."""
    B, T, H, HKV, NB, D, R, DV = 1, 20, 2, 2, 2, 16, 16, 16
    q, kv, kr = _inputs(B, T, H, HKV, NB, D, R, DV, seed=3)

    def out(q, kv, kr):
        return latent_train_attention_fused(q[..., :D], q[..., D:], kv, kr, 0.25, 0.7).float()

    base = out(q, kv, kr)
    kv2 = kv.clone()
    kv2[:, 9, 1, 0, D:] += 1.0  # value of branch 1, head 0, position 9
    diff = (out(q, kv2, kr) - base).abs().amax(-1)  # [B, T, H]
    assert diff[0, :9].max() == 0 and diff[0, 9:, 0].min() > 0 and diff[0, :, 1].max() == 0
    kr2 = kr.clone()
    kr2[:, 5] += 1.0  # the shared RoPE key at position 5 reaches every head from t=5 on
    diff = (out(q, kv, kr2) - base).abs().amax(-1)
    assert diff[0, :5].max() == 0 and diff[0, 5:].min() > 0


def _latent_layer(variant: str, **overrides) -> tuple[LatentAttention, ModelConfig]:
    cfg = ModelConfig.preset(variant, size="tiny", **overrides)
    torch.manual_seed(0)
    attn = LatentAttention(cfg).to(DEVICE)
    attn.reset_parameters()
    with torch.no_grad():  # a non-zero output projection and a non-trivial norm
        attn.kv_norm.uniform_(0.5, 1.5)
    return attn, cfg


VARIANTS = [("mla", {}), ("gla_2", {}), ("gla_4", {}), ("mlra_2", {}), ("mlra_4", {}),
            ("mlra_4", {"latent_scaling": False}), ("mlra_2", {"output_scale": 0.3}),
            ("gla_2", {"output_gate": True})]


@pytest.mark.parametrize(("variant", "overrides"), VARIANTS)
def test_model_attend_fused_matches_sdpa(variant, overrides, monkeypatch):
    """The layer's own tensors through the kernel (as ``attend`` passes them on CUDA) give the
    SDPA path's output and gradients of the queries, the latent, the RoPE key and the
    up-projection weights: within bf16 tolerance of fp64, and no worse than SDPA in bf16."""
    attn, cfg = _latent_layer(variant, **overrides)
    B, T = 2, 19
    x = torch.randn(B, T, cfg.d_model, device=DEVICE)
    rope = Rotary(torch.arange(T, device=DEVICE).expand(B, T), cfg.rope_base)
    with torch.no_grad():
        q = attn.query(x, rope)
        st = attn.kv_state(x, rope)
    grad = torch.randn(B, T, cfg.attn_out_dim, device=DEVICE)

    def run(dtype, fused):
        monkeypatch.setenv("MLRA_DISABLE_TRITON", "0" if fused else "1")
        attn.zero_grad(set_to_none=True)
        qq = [t.detach().to(dtype).requires_grad_() for t in q]
        ss = {k: t.detach().to(dtype).requires_grad_() for k, t in st.items()}
        layer = attn.to(dtype)
        if fused and not ON_GPU:  # what attend does on CUDA, through the interpreter
            o = latent_train_attention_up_fused(qq[0], qq[1], ss["latent"], layer.wkv_b(),
                                                ss["k_rope"], attn.branches, cfg.softmax_scale,
                                                attn.out_scale)
            o = o.reshape(B, T, -1)
        else:
            o = layer.attend(tuple(qq), ss, None)
        o.backward(grad.to(dtype))
        grads = [o, *(t.grad for t in qq), ss["latent"].grad, ss["k_rope"].grad,
                 layer.wkv_b.weight.grad]
        assert all(g is not None for g in grads)
        return [g.detach().double().clone() for g in grads]

    ref = run(torch.float64, fused=False)
    sdpa = run(torch.bfloat16, fused=False)
    fused = run(torch.bfloat16, fused=True)
    attn.to(torch.float32)
    for name, f, s, r in zip(("out", "q_nope", "q_rope", "latent", "k_rope", "wkv_b"),
                             fused, sdpa, ref, strict=True):
        err_f, err_s = rel_error(f, r), rel_error(s, r)
        assert err_f < TOL and err_f < 2 * err_s + 2e-3, (name, err_f, err_s)


def test_dispatch_and_fallbacks():
    """The reference runs where the kernel cannot (CPU tensors, fp32 without autocast, unequal
    query/key lengths, non-power-of-two widths); masked calls keep the SDPA path in the model."""
    q, kv, kr = _inputs(1, 8, 2, 2, 2, 16, 16, 16, seed=0)
    args = (q[..., :16], q[..., 16:], kv, kr)
    assert train_kernel_supports(*args) == ON_GPU
    assert not train_kernel_supports(*(t.float() for t in args))
    assert not train_kernel_supports(args[0][:, :4], args[1][:, :4], *args[2:])
    odd = torch.randn(1, 8, 2, 24, device=DEVICE, dtype=torch.bfloat16)
    assert not train_kernel_supports(odd, *args[1:])
    o = latent_train_attention(*(t.float() for t in args), 0.2, 0.5)
    ref = latent_train_attention_ref(*(t.float() for t in args), 0.2, 0.5)
    assert o.dtype == torch.float32 and torch.allclose(o, ref)
    # padding masks: the model's masked attend equals the reference path (SDPA with the mask)
    attn, cfg = _latent_layer("mlra_2")
    x = torch.randn(1, 9, cfg.d_model, device=DEVICE)
    rope = Rotary(torch.arange(9, device=DEVICE)[None], cfg.rope_base)
    mask = torch.ones(1, 1, 9, 9, dtype=torch.bool, device=DEVICE).tril()
    with torch.no_grad():
        q_, st = attn.query(x, rope), attn.kv_state(x, rope)
        masked = attn.attend(q_, st, mask)
        assert torch.allclose(masked, attn.attend_absorbed(q_, st, mask), atol=1e-5)


def test_fused_op_compiles_without_graph_breaks():
    """torch.compile sees the fused attention as one opaque operator: no graph break, shapes
    from the fake implementations, and the same forward and gradients as eager."""
    B, T, H, NB, D, R = 1, 18, 2, 2, 16, 16
    q, kv, kr = _inputs(B, T, H, H, NB, D, R, D, seed=7)

    def fn(q, kv, kr):
        return (latent_train_attention_fused(q[..., :D], q[..., D:], kv, kr, 0.2, 0.7) * 2).sum()

    explained = torch._dynamo.explain(fn)(q, kv, kr)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    leaves = [[t.detach().clone().requires_grad_() for t in (q, kv, kr)] for _ in range(2)]
    eager = fn(*leaves[0])
    eager.backward()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(*leaves[1])
    compiled.backward()
    torch._dynamo.reset()
    assert torch.allclose(eager.float(), compiled.float())
    for a, b in zip(leaves[0], leaves[1], strict=True):
        assert torch.equal(a.grad, b.grad)
