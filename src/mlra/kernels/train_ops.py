"""The fused training attention as a differentiable ``torch.library`` operator.

``torch.ops.mlra.latent_train_attn_fwd`` / ``..._bwd`` run the Triton kernels of
:mod:`mlra.kernels.triton_latent_train`, imported when the operator first runs: this module
imports no Triton, and ``torch.compile`` treats the operators as opaque (no graph break, no
tracing into the launchers). Shapes and the math: :func:`mlra.kernels.reference.
latent_train_attention_ref`.
"""

from __future__ import annotations

import torch


def _shapes(q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor):
    B, T, H, DH = q_nope.shape
    return B, T, H, DH, q_rope.shape[-1], kv.shape[-1] - DH, kv.shape[2], kv.shape[3]


@torch.library.custom_op("mlra::latent_train_attn_fwd", mutates_args=())
def _attn_fwd(q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor,
              k_rope: torch.Tensor, scale: float, out_scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mlra.kernels import triton_latent_train

    return triton_latent_train.forward(q_nope, q_rope, kv, k_rope, scale, out_scale)


@_attn_fwd.register_fake
def _attn_fwd_fake(q_nope, q_rope, kv, k_rope, scale, out_scale):
    B, T, H, _, _, DV, NB, _ = _shapes(q_nope, q_rope, kv)
    o = q_nope.new_empty(B, T, H, DV)
    ob = q_nope.new_empty(B, T, NB, H, DV) if NB > 1 else q_nope.new_empty(0)
    return o, ob, q_nope.new_empty(B, NB, H, T, dtype=torch.float32)


@torch.library.custom_op("mlra::latent_train_attn_bwd", mutates_args=())
def _attn_bwd(do: torch.Tensor, q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor,
              k_rope: torch.Tensor, o: torch.Tensor, ob: torch.Tensor, lse: torch.Tensor,
              scale: float, out_scale: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mlra.kernels import triton_latent_train

    return triton_latent_train.backward(do, q_nope, q_rope, kv, k_rope, o, ob, lse, scale,
                                        out_scale)


@_attn_bwd.register_fake
def _attn_bwd_fake(do, q_nope, q_rope, kv, k_rope, o, ob, lse, scale, out_scale):
    B, T, H, DH, DR, DV, NB, HKV = _shapes(q_nope, q_rope, kv)
    return (q_nope.new_empty(B, T, H, DH), q_rope.new_empty(B, T, H, DR),
            kv.new_empty(B, T, NB, HKV, DH + DV), k_rope.new_empty(B, T, DR))


def _setup_context(ctx, inputs, output) -> None:
    q_nope, q_rope, kv, k_rope, scale, out_scale = inputs
    o, ob, lse = output
    ctx.save_for_backward(q_nope, q_rope, kv, k_rope, o, ob, lse)
    ctx.scale, ctx.out_scale = scale, out_scale


def _backward(ctx, do, _dob, _dlse):
    q_nope, q_rope, kv, k_rope, o, ob, lse = ctx.saved_tensors
    grads = _attn_bwd(do, q_nope, q_rope, kv, k_rope, o, ob, lse, ctx.scale, ctx.out_scale)
    return (*grads, None, None)


_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def up_project(latent: torch.Tensor, w_up: torch.Tensor, branches: int) -> torch.Tensor:
    """Per-branch packed NoPE keys and values ``[B, S, branches, Hkv, 2 * D]`` of the latent
    ``[B, S, L, W]`` through the grouped up-projection ``w_up [L, W, O]`` (latent head l maps
    to ``O`` outputs, head-major with ``[k_nope | v]`` per head; branch-major latent heads)."""
    B, S, L, _ = latent.shape
    kv = torch.einsum("bslw,lwo->bslo", latent, w_up)
    return kv.reshape(B, S, branches, L * w_up.shape[-1] // branches)


@torch.library.custom_op("mlra::latent_up_attn_fwd", mutates_args=())
def _up_attn_fwd(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor,
                 w_up: torch.Tensor, k_rope: torch.Tensor, branches: int, scale: float,
                 out_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mlra.kernels import triton_latent_train

    kv = _kv(q_nope, latent, w_up, branches)
    return triton_latent_train.forward(q_nope, q_rope, kv, k_rope, scale, out_scale)


def _kv(q_nope, latent, w_up, branches):
    kv = up_project(latent, w_up, branches)
    d2 = 2 * q_nope.shape[-1]
    return kv.view(*kv.shape[:3], kv.shape[3] // d2, d2)


@_up_attn_fwd.register_fake
def _up_attn_fwd_fake(q_nope, q_rope, latent, w_up, k_rope, branches, scale, out_scale):
    B, T, H, D = q_nope.shape
    o = q_nope.new_empty(B, T, H, D)
    ob = q_nope.new_empty(B, T, branches, H, D) if branches > 1 else q_nope.new_empty(0)
    return o, ob, q_nope.new_empty(B, branches, H, T, dtype=torch.float32)


def _up_setup_context(ctx, inputs, output) -> None:
    q_nope, q_rope, latent, w_up, k_rope, branches, scale, out_scale = inputs
    o, ob, lse = output
    ctx.save_for_backward(q_nope, q_rope, latent, w_up, k_rope, o, ob, lse)
    ctx.branches, ctx.scale, ctx.out_scale = branches, scale, out_scale


def _up_backward(ctx, do, _dob, _dlse):
    q_nope, q_rope, latent, w_up, k_rope, o, ob, lse = ctx.saved_tensors
    kv = _kv(q_nope, latent, w_up, ctx.branches)  # recomputed, not saved: one small matmul
    dq_nope, dq_rope, dkv, dk_rope = _attn_bwd(do, q_nope, q_rope, kv, k_rope, o, ob, lse,
                                               ctx.scale, ctx.out_scale)
    dkv = dkv.reshape(*latent.shape[:3], w_up.shape[-1])
    d_latent = torch.einsum("bslo,lwo->bslw", dkv, w_up)
    d_w = torch.einsum("bslw,bslo->lwo", latent, dkv)
    return dq_nope, dq_rope, d_latent, d_w, dk_rope, None, None, None


_up_attn_fwd.register_autograd(_up_backward, setup_context=_up_setup_context)


def latent_train_attention_up_fused(
    q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, w_up: torch.Tensor,
    k_rope: torch.Tensor, branches: int, scale: float, out_scale: float,
) -> torch.Tensor:
    """:func:`latent_train_attention_fused` of ``kv = up_project(latent, w_up, branches)``
    (values as wide as the NoPE keys), with the up-projection inside the operator: ``kv`` is
    recomputed in the backward instead of being kept for it."""
    return _up_attn_fwd(q_nope, q_rope, latent, w_up, k_rope, int(branches), float(scale),
                        float(out_scale))[0]


def latent_train_attention_fused(
    q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, k_rope: torch.Tensor,
    scale: float, out_scale: float,
) -> torch.Tensor:
    """Fused causal latent training attention through the Triton kernels (differentiable).
    Inputs as :func:`~mlra.kernels.reference.latent_train_attention_ref`; saved for the
    backward: the inputs, the output, the per-branch outputs (more than one branch) and the
    per-branch log-sum-exp."""
    return _attn_fwd(q_nope, q_rope, kv, k_rope, float(scale), float(out_scale))[0]
