"""The small per-layer kernels of a decode step around the attention kernel, one launch each:

- :func:`latent_decode_prepare_triton`: the latent family's cache row of each new token
  (per latent head RMSNorm, scale, RoPE key) written at its slot, the RoPE queries and the
  absorbed queries (``q_nope @ W_UK`` per latent head), from the two projection outputs;
- :func:`latent_up_output_triton`: ``W_UV`` per latent head and query head, summed over
  branches, scaled;
- :func:`gqa_decode_prepare_triton`: RoPE on q and k, the new k/v rows written at their slots.

Contracts: the references of the same names in :mod:`mlra.kernels.reference`. Import only
after checking :func:`mlra.kernels.triton_available`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import next_pow2


@triton.jit
def _rope(src_ptr, cos_ptr, sin_ptr, R: tl.constexpr):
    """Rotate-half RoPE of the ``R`` values at ``src_ptr`` (fp32)."""
    j = tl.arange(0, R)
    half: tl.constexpr = R // 2
    x = tl.load(src_ptr + j).to(tl.float32)
    partner = tl.load(src_ptr + tl.where(j < half, j + half, j - half)).to(tl.float32)
    rotated = tl.where(j < half, -partner, partner)
    return x * tl.load(cos_ptr + j) + rotated * tl.load(sin_ptr + j)


@triton.jit
def _latent_prepare_kernel(
    q_ptr, c_ptr, cos_ptr, sin_ptr, kvn_ptr, w_ptr, pool_ptr, slot_ptr, qabs_ptr, qrope_ptr,
    kv_scale, eps, stride_qm, stride_cm, stride_wl, stride_ww, stride_pool,
    L: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr, R: tl.constexpr, D: tl.constexpr,
    HG: tl.constexpr, G: tl.constexpr, NB: tl.constexpr, BW: tl.constexpr, WB: tl.constexpr,
):
    m = tl.program_id(0)
    p = tl.program_id(1)
    cos_m = cos_ptr + m * R
    sin_m = sin_ptr + m * R
    if p == 0:  # the cache row of token m
        dst = pool_ptr + tl.load(slot_ptr + m).to(tl.int64) * stride_pool
        offs = tl.arange(0, W_PAD)
        mask = offs < W
        for l in tl.static_range(L):
            x = tl.load(c_ptr + m * stride_cm + l * W + offs, mask=mask, other=0.0)
            xf = x.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / W + eps)
            weight = tl.load(kvn_ptr + l * W + offs, mask=mask, other=0.0)
            normed = (xf * rstd).to(x.dtype).to(tl.float32) * weight.to(tl.float32)
            y = normed.to(x.dtype).to(tl.float32) * kv_scale
            tl.store(dst + l * W + offs, y.to(pool_ptr.dtype.element_ty), mask=mask)
        k_rope = _rope(c_ptr + m * stride_cm + L * W, cos_m, sin_m, R)
        tl.store(dst + L * W + tl.arange(0, R), k_rope.to(pool_ptr.dtype.element_ty))
    else:  # absorbed query of head h for branch n, widths [wb * BW, (wb + 1) * BW)
        p = p - 1
        h = p // (NB * WB)
        n = (p // WB) % NB
        wb = p % WB
        g = h // HG
        i = h % HG
        offs_d = tl.arange(0, D)
        q_head = q_ptr + m * stride_qm + h * (D + R)
        q_nope = tl.load(q_head + offs_d).to(tl.float32)
        offs_w = wb * BW + tl.arange(0, BW)
        mask_w = offs_w < W
        l = n * G + g
        w_uk = tl.load(w_ptr + l * stride_wl + offs_w[:, None] * stride_ww + i * 2 * D
                       + offs_d[None, :], mask=mask_w[:, None], other=0.0)
        q_abs = tl.sum(w_uk.to(tl.float32) * q_nope[None, :], axis=1)
        row = ((m * NB + n) * G + g) * HG + i
        tl.store(qabs_ptr + row * W + offs_w, q_abs.to(qabs_ptr.dtype.element_ty), mask=mask_w)
        if (n == 0) & (wb == 0):
            q_rope = _rope(q_head + D, cos_m, sin_m, R)
            tl.store(qrope_ptr + ((m * G + g) * HG + i) * R + tl.arange(0, R),
                     q_rope.to(qrope_ptr.dtype.element_ty))


def latent_decode_prepare_triton(
    q: torch.Tensor, c_kv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    kv_norm: torch.Tensor, kv_scale: float, w_up: torch.Tensor, pool: torch.Tensor,
    slots: torch.Tensor, branches: int, head_dim: int, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mlra.kernels.reference.latent_decode_prepare_ref`."""
    B, T = q.shape[:2]
    M = B * T
    L, W = kv_norm.shape
    R, D = cos.shape[-1], head_dim
    H = q.shape[-1] // (D + R)
    G = L // branches
    HG = H // G
    q2, c2 = q.reshape(M, -1), c_kv.reshape(M, -1)
    cos2, sin2 = cos.reshape(M, R).contiguous(), sin.reshape(M, R).contiguous()
    q_abs = torch.empty(B, T, branches, G, HG, W, dtype=q.dtype, device=q.device)
    q_rope = torch.empty(B, T, G, HG, R, dtype=q.dtype, device=q.device)
    if M == 0:
        return q_abs, q_rope
    bw = min(128, next_pow2(W))
    wb = triton.cdiv(W, bw)
    _latent_prepare_kernel[(M, 1 + H * branches * wb)](
        q2, c2, cos2, sin2, kv_norm, w_up, pool, slots, q_abs, q_rope,
        float(kv_scale), float(eps), q2.stride(0), c2.stride(0), w_up.stride(0),
        w_up.stride(1), pool.stride(1),
        L=L, W=W, W_PAD=next_pow2(W), R=R, D=D, HG=HG, G=G, NB=branches, BW=bw, WB=wb,
        num_warps=4,
    )
    return q_abs, q_rope


@triton.jit
def _latent_up_kernel(
    z_ptr, w_ptr, o_ptr, out_scale, stride_wl, stride_ww, stride_om,
    W: tl.constexpr, D: tl.constexpr, HG: tl.constexpr, G: tl.constexpr, NB: tl.constexpr,
    BW: tl.constexpr, BD: tl.constexpr,
):
    m = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.program_id(2) * BD + tl.arange(0, BD)
    g = h // HG
    i = h % HG
    acc = tl.zeros([BD], dtype=tl.float32)
    for n in tl.static_range(NB):
        z_row = z_ptr + (((m * NB + n) * G + g) * HG + i) * W
        w_l = w_ptr + (n * G + g) * stride_wl + i * 2 * D + D
        for w0 in tl.static_range(0, W, BW):
            offs_w = w0 + tl.arange(0, BW)
            mask_w = offs_w < W
            z = tl.load(z_row + offs_w, mask=mask_w, other=0.0)
            z = z.to(w_ptr.dtype.element_ty).to(tl.float32)  # the reference rounds z first
            w_uv = tl.load(w_l + offs_w[:, None] * stride_ww + offs_d[None, :],
                           mask=mask_w[:, None], other=0.0)
            acc += tl.sum(w_uv.to(tl.float32) * z[:, None], axis=0)
    tl.store(o_ptr + m * stride_om + h * D + offs_d, (acc * out_scale).to(o_ptr.dtype.element_ty))


def latent_up_output_triton(
    z: torch.Tensor, w_up: torch.Tensor, out_scale: float, head_dim: int
) -> torch.Tensor:
    """Triton implementation of :func:`mlra.kernels.reference.latent_up_output_ref`."""
    B, T, NB, G, HG, W = z.shape
    D = head_dim
    M = B * T
    z = z.contiguous()
    out = torch.empty(B, T, G * HG * D, dtype=w_up.dtype, device=z.device)
    if M == 0:
        return out
    bd = min(64, D)
    o2 = out.view(M, -1)
    _latent_up_kernel[(M, G * HG, triton.cdiv(D, bd))](
        z, w_up, o2, float(out_scale), w_up.stride(0), w_up.stride(1), o2.stride(0),
        W=W, D=D, HG=HG, G=G, NB=NB, BW=min(64, next_pow2(W)), BD=bd, num_warps=4,
    )
    return out


@triton.jit
def _gqa_prepare_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kp_ptr, vp_ptr, slot_ptr, qo_ptr,
    stride_qm, stride_km, stride_vm, stride_kp, stride_vp,
    H: tl.constexpr, D: tl.constexpr,
):
    m = tl.program_id(0)
    p = tl.program_id(1)
    cos_m = cos_ptr + m * D
    sin_m = sin_ptr + m * D
    offs = tl.arange(0, D)
    if p < H:
        q = _rope(q_ptr + m * stride_qm + p * D, cos_m, sin_m, D)
        tl.store(qo_ptr + (m * H + p) * D + offs, q.to(qo_ptr.dtype.element_ty))
    else:
        j = p - H
        slot = tl.load(slot_ptr + m).to(tl.int64)
        k = _rope(k_ptr + m * stride_km + j * D, cos_m, sin_m, D)
        tl.store(kp_ptr + slot * stride_kp + j * D + offs, k.to(kp_ptr.dtype.element_ty))
        v = tl.load(v_ptr + m * stride_vm + j * D + offs)
        tl.store(vp_ptr + slot * stride_vp + j * D + offs, v.to(vp_ptr.dtype.element_ty))


def gqa_decode_prepare_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, head_dim: int,
) -> torch.Tensor:
    """Triton implementation of :func:`mlra.kernels.reference.gqa_decode_prepare_ref`."""
    B, T = q.shape[:2]
    M, D = B * T, head_dim
    H, Hkv = q.shape[-1] // D, k.shape[-1] // D
    q2, k2, v2 = q.reshape(M, -1), k.reshape(M, -1), v.reshape(M, -1)
    cos2, sin2 = cos.reshape(M, D).contiguous(), sin.reshape(M, D).contiguous()
    out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device)
    if M == 0:
        return out
    _gqa_prepare_kernel[(M, H + Hkv)](
        q2, k2, v2, cos2, sin2, k_pool, v_pool, slots, out,
        q2.stride(0), k2.stride(0), v2.stride(0), k_pool.stride(1), v_pool.stride(1),
        H=H, D=D, num_warps=2,
    )
    return out
