"""Fused causal training attention for the latent family (MLA, GLA, MLRA): forward and backward.

Contract: :func:`mlra.kernels.reference.latent_train_attention_ref`. Per query head ``h`` and
branch ``b``, the scores are ``scale * (q_nope . k_nope[b] + q_rope . k_rope)``, causal, one
softmax per branch; the output is ``out_scale * sum_b softmax_b @ v[b]``. The kernels read each
branch's NoPE keys / values, packed ``kv [B, S, NB, Hkv, D + Dv]``, and the one shared RoPE key
``k_rope [B, S, R]`` where they lie (any strides with a contiguous last dim; nothing is
concatenated or expanded per head or branch).

Forward (one program per block of ``BLOCK_M`` query rows and head): the branches are taken in
chunks of ``branches_per_program``; per key tile, ``q_rope . k_rope`` is computed once for the
chunk and added to each of its branches' NoPE scores; each branch keeps its own online softmax
and accumulator; the branch outputs are summed (times ``out_scale``) in the program (in
registers for one chunk, else from the per-branch outputs it stored). One chunk of all
branches computes the RoPE scores once per tile; smaller chunks trade that for registers (four
fp32 accumulators of a 128-row tile do not fit: the H200 default for several branches is
chunks of two).

Backward (FlashAttention-2 split, log2-domain softmax statistics saved per branch):

- ``delta_b = out_scale * rowsum(dO * O_b)`` from the per-branch outputs the forward stored
  (for one branch, from the output itself: nothing extra is stored);
- ``dQ`` kernel: per query block, branches in chunks as in the forward; per key tile, the
  chunk's RoPE scores once, then for each branch its probabilities, ``dP_b = out_scale * dO @
  V_b^T``, ``dS_b`` and ``dQ_nope += dS_b @ K_b``; the RoPE query gradient uses the chunk's
  ``sum_b dS_b`` once per tile;
- ``dK/dV`` kernel: per key block, per branch (and per KV head, looping over the query heads
  that read it), ``dV_b``, ``dK_b`` and a partial RoPE-key gradient, summed over heads and
  branches by the caller.

The differentiable op around :func:`forward` / :func:`backward` is
:func:`mlra.kernels.train_ops.latent_train_attention_fused` (a Triton-free module, so that
``torch.compile`` sees one opaque operator).

Numerics: bf16 / fp16 operands, fp32 accumulation, softmax statistics in fp32 (log2 domain),
probabilities rounded to the input dtype for the ``P @ V``, ``dS @ K`` and ``dS^T @ Q`` products.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from mlra.kernels._triton_common import INTERPRET, LOG2E

MAX_BRANCHES_PER_PROGRAM = 4


@dataclasses.dataclass(frozen=True)
class TrainKernelConfig:
    """Launch parameters of the three training kernels (forward, dQ, dK/dV).

    ``fwd_block_m`` must be a multiple of ``fwd_block_n``, ``dq_block_m`` of ``dq_block_n`` and
    ``dkv_block_n`` of ``dkv_block_m`` (the causal split into unmasked and diagonal tiles).
    """

    fwd_block_m: int = 128
    fwd_block_n: int = 64
    fwd_warps: int = 8
    fwd_stages: int = 3
    #: branches whose RoPE scores one forward tile shares (a divisor of the branch count, at
    #: most 4; None = all): each program runs its head's branches in chunks of this size
    branches_per_program: int | None = None
    dq_block_m: int = 128
    dq_block_n: int = 32
    dq_warps: int = 8
    dq_stages: int = 2
    #: as ``branches_per_program``, for the dQ pass
    dq_branches_per_program: int | None = None
    dkv_block_m: int = 32
    dkv_block_n: int = 128
    dkv_warps: int = 8
    dkv_stages: int = 3

    def __post_init__(self) -> None:
        for big, small in (("fwd_block_m", "fwd_block_n"), ("dq_block_m", "dq_block_n"),
                           ("dkv_block_n", "dkv_block_m")):
            if getattr(self, big) % getattr(self, small):
                raise ValueError(f"{big} must be a multiple of {small} (the causal split into "
                                 f"unmasked and diagonal tiles); got {getattr(self, big)} and "
                                 f"{getattr(self, small)}")


#: small tiles for the interpreter; chunks of two branches exercise the chunked paths
INTERPRETER_CONFIG = TrainKernelConfig(
    fwd_block_m=32, fwd_block_n=16, fwd_warps=4, fwd_stages=1, branches_per_program=2,
    dq_block_m=32, dq_block_n=16, dq_warps=4, dq_stages=1, dq_branches_per_program=2,
    dkv_block_m=16, dkv_block_n=32, dkv_warps=4, dkv_stages=1,
)

#: launch configurations on GPUs by branch count (measured on an H200: see
#: benchmarks/train/README.md)
GPU_CONFIGS: dict[int, TrainKernelConfig] = {
    1: TrainKernelConfig(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=3,
                         dq_block_m=128, dq_block_n=32, dq_warps=8, dq_stages=2,
                         dkv_block_m=32, dkv_block_n=128, dkv_warps=8, dkv_stages=3),
    2: TrainKernelConfig(fwd_block_m=128, fwd_block_n=64, fwd_warps=8, fwd_stages=2,
                         branches_per_program=2, dq_block_m=128, dq_block_n=32, dq_warps=8,
                         dq_stages=2, dq_branches_per_program=1, dkv_block_m=32,
                         dkv_block_n=128, dkv_warps=8, dkv_stages=3),
}


def default_config(branches: int) -> TrainKernelConfig:
    if INTERPRET:
        return INTERPRETER_CONFIG
    key = max(k for k in GPU_CONFIGS if k <= branches) if branches >= 1 else 1
    return GPU_CONFIGS[key]


# ------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------
@triton.jit
def _fwd_branch(acc, m_i, l_i, q, s_rope, k_ptrs, v_ptrs, offs_m, offs_n, n_ok, qk_scale,
                CAUSAL: tl.constexpr):
    """One online-softmax step of one branch over one key tile (RoPE scores given)."""
    if CAUSAL:
        k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
    s = tl.dot(q, tl.trans(k), s_rope) * qk_scale
    if CAUSAL:
        s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if CAUSAL:
        v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i


@triton.jit
def _fwd_tile(acc0, m0, l0, acc1, m1, l1, acc2, m2, l2, acc3, m3, l3,
              q, qr, kn_ptrs, v_ptrs, kr_ptrs, s_kn_n, s_v_n, offs_m, offs_n, n_ok, qk_scale,
              NBC: tl.constexpr, CAUSAL: tl.constexpr):
    """All of a program's branches over one key tile: the RoPE scores once, then each branch."""
    if CAUSAL:
        kr = tl.load(kr_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        kr = tl.load(kr_ptrs)
    s_rope = tl.dot(qr, tl.trans(kr))
    acc0, m0, l0 = _fwd_branch(acc0, m0, l0, q, s_rope, kn_ptrs, v_ptrs, offs_m, offs_n, n_ok,
                               qk_scale, CAUSAL)
    if NBC > 1:
        acc1, m1, l1 = _fwd_branch(acc1, m1, l1, q, s_rope, kn_ptrs + s_kn_n, v_ptrs + s_v_n,
                                   offs_m, offs_n, n_ok, qk_scale, CAUSAL)
    if NBC > 2:
        acc2, m2, l2 = _fwd_branch(acc2, m2, l2, q, s_rope, kn_ptrs + 2 * s_kn_n,
                                   v_ptrs + 2 * s_v_n, offs_m, offs_n, n_ok, qk_scale, CAUSAL)
    if NBC > 3:
        acc3, m3, l3 = _fwd_branch(acc3, m3, l3, q, s_rope, kn_ptrs + 3 * s_kn_n,
                                   v_ptrs + 3 * s_v_n, offs_m, offs_n, n_ok, qk_scale, CAUSAL)
    return acc0, m0, l0, acc1, m1, l1, acc2, m2, l2, acc3, m3, l3


@triton.jit
def _fwd_finish(acc, m_i, l_i, lse_ptrs, ob_ptrs, m_ok, STORE_OB: tl.constexpr):
    """Normalise one branch, store its log2-domain LSE (and its output); return the output."""
    o = acc / l_i[:, None]
    tl.store(lse_ptrs, m_i + tl.math.log2(l_i), mask=m_ok)
    if STORE_OB:
        tl.store(ob_ptrs, o.to(ob_ptrs.dtype.element_ty), mask=m_ok[:, None])
    return o


@triton.jit
def _fwd_kernel(
    Qn, Qr, Kn, V, Kr, O, OB, LSE,
    s_qn_b, s_qn_t, s_qn_h, s_qr_b, s_qr_t, s_qr_h,
    s_kn_b, s_kn_s, s_kn_n, s_kn_h, s_v_b, s_v_s, s_v_n, s_v_h, s_kr_b, s_kr_s,
    s_o_b, s_o_t, s_o_h, s_ob_b, s_ob_t, s_ob_n, s_ob_h,
    T, H, qk_scale, out_scale,
    NB: tl.constexpr, NBC: tl.constexpr, GROUP: tl.constexpr,
    DH: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STORE_OB: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, DH)
    offs_r = tl.arange(0, DR)
    offs_v = tl.arange(0, DV)
    m_ok = offs_m < T
    q = tl.load(Qn + b * s_qn_b + h * s_qn_h + offs_m[:, None] * s_qn_t + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    qr = tl.load(Qr + b * s_qr_b + h * s_qr_h + offs_m[:, None] * s_qr_t + offs_r[None, :],
                 mask=m_ok[:, None], other=0.0)
    o_base = O + b * s_o_b + h * s_o_h + offs_m[:, None] * s_o_t + offs_v[None, :]
    ob_base = OB + b * s_ob_b + h * s_ob_h + offs_m[:, None] * s_ob_t + offs_v[None, :]
    for chunk in range(NB // NBC):  # chunks of NBC branches that share the RoPE scores
        br0 = chunk * NBC
        o = _fwd_chunk(q, qr, Kn + b * s_kn_b + hk * s_kn_h + br0 * s_kn_n + offs_d[None, :],
                       V + b * s_v_b + hk * s_v_h + br0 * s_v_n + offs_v[None, :],
                       Kr + b * s_kr_b + offs_r[None, :], LSE + ((b * NB + br0) * H + h) * T
                       + offs_m, ob_base + br0 * s_ob_n, s_kn_s, s_kn_n, s_v_s, s_v_n,
                       s_kr_s, s_ob_n, pid_m, offs_m, m_ok, T, H, qk_scale, NBC, DV, BLOCK_M,
                       BLOCK_N, STORE_OB)
        if NBC == NB:
            tl.store(o_base, (o * out_scale).to(O.dtype.element_ty),
                     mask=m_ok[:, None])
    if NBC < NB:  # sum the stored branch outputs of this block (written by this program)
        tl.debug_barrier()
        o = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
        for br in range(NB):
            o += tl.load(ob_base + br * s_ob_n, mask=m_ok[:, None], other=0.0).to(tl.float32)
        tl.store(o_base, (o * out_scale).to(O.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _fwd_chunk(q, qr, kn_base, v_base, kr_base, lse_base, ob_base, s_kn_s, s_kn_n, s_v_s, s_v_n,
               s_kr_s, s_ob_n, pid_m, offs_m, m_ok, T, H, qk_scale,
               NBC: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, STORE_OB: tl.constexpr):
    """NBC branches of one block of query rows over all its keys; returns the sum of their
    normalised outputs (and stores their LSE, and their outputs when STORE_OB)."""
    acc0 = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    m0 = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l0 = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc1, m1, l1 = acc0, m0, l0
    acc2, m2, l2 = acc0, m0, l0
    acc3, m3, l3 = acc0, m0, l0
    lo = pid_m * BLOCK_M
    for start_n in range(0, lo, BLOCK_N):  # tiles fully below the diagonal: no masks
        offs_n = start_n + tl.arange(0, BLOCK_N)
        acc0, m0, l0, acc1, m1, l1, acc2, m2, l2, acc3, m3, l3 = _fwd_tile(
            acc0, m0, l0, acc1, m1, l1, acc2, m2, l2, acc3, m3, l3, q, qr,
            kn_base + offs_n[:, None] * s_kn_s, v_base + offs_n[:, None] * s_v_s,
            kr_base + offs_n[:, None] * s_kr_s, s_kn_n, s_v_n, offs_m, offs_n, offs_n < T,
            qk_scale, NBC, False)
    hi = tl.minimum(lo + BLOCK_M, T)
    for start_n in range(lo, hi, BLOCK_N):  # diagonal tiles: causal and length masks
        offs_n = start_n + tl.arange(0, BLOCK_N)
        acc0, m0, l0, acc1, m1, l1, acc2, m2, l2, acc3, m3, l3 = _fwd_tile(
            acc0, m0, l0, acc1, m1, l1, acc2, m2, l2, acc3, m3, l3, q, qr,
            kn_base + offs_n[:, None] * s_kn_s, v_base + offs_n[:, None] * s_v_s,
            kr_base + offs_n[:, None] * s_kr_s, s_kn_n, s_v_n, offs_m, offs_n, offs_n < T,
            qk_scale, NBC, True)
    o = _fwd_finish(acc0, m0, l0, lse_base, ob_base, m_ok, STORE_OB)
    if NBC > 1:
        o += _fwd_finish(acc1, m1, l1, lse_base + H * T, ob_base + s_ob_n, m_ok, STORE_OB)
    if NBC > 2:
        o += _fwd_finish(acc2, m2, l2, lse_base + 2 * H * T, ob_base + 2 * s_ob_n, m_ok,
                         STORE_OB)
    if NBC > 3:
        o += _fwd_finish(acc3, m3, l3, lse_base + 3 * H * T, ob_base + 3 * s_ob_n, m_ok,
                         STORE_OB)
    return o


# ------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------
@triton.jit
def _delta_kernel(
    DO, X, DELTA,
    s_do_b, s_do_t, s_do_h, s_x_b, s_x_t, s_x_n, s_x_h,
    T, H, mult,
    NB: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[b, branch, h, t] = mult * sum_d dO[b, t, h, d] * X[b, t, branch, h, d]."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = tl.arange(0, DV)
    m_ok = offs_m < T
    do = tl.load(DO + b * s_do_b + h * s_do_h + offs_m[:, None] * s_do_t + offs_v[None, :],
                 mask=m_ok[:, None], other=0.0).to(tl.float32)
    x_base = X + b * s_x_b + h * s_x_h + offs_m[:, None] * s_x_t + offs_v[None, :]
    for br in range(NB):
        x = tl.load(x_base + br * s_x_n, mask=m_ok[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + ((b * NB + br) * H + h) * T + offs_m, mult * tl.sum(do * x, 1),
                 mask=m_ok)


@triton.jit
def _dq_branch(dq, ds_sum, q, do, s_rope, k_ptrs, v_ptrs, lse_ptrs, dl_ptrs, offs_m, offs_n,
               n_ok, m_ok, qk_scale, out_scale, CAUSAL: tl.constexpr):
    """One branch over one key tile of the dQ pass."""
    if CAUSAL:
        k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    lse = tl.load(lse_ptrs, mask=m_ok, other=float("inf"))
    dl = tl.load(dl_ptrs, mask=m_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), s_rope)
    p = tl.math.exp2(s * qk_scale - lse[:, None])
    if CAUSAL:
        p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp * out_scale - dl[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq, ds_sum + ds


@triton.jit
def _dq_tile(dq, dqr, q, qr, do, kn_ptrs, v_ptrs, kr_ptrs, lse_ptrs, dl_ptrs, s_kn_n, s_v_n,
             HT, offs_m, offs_n, n_ok, m_ok, qk_scale, out_scale,
             NBC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             CAUSAL: tl.constexpr):
    """NBC branches over one key tile of the dQ pass: the RoPE scores and the RoPE-query
    gradient (from the branches' summed dS) once."""
    if CAUSAL:
        kr = tl.load(kr_ptrs, mask=n_ok[:, None], other=0.0)
    else:
        kr = tl.load(kr_ptrs)
    s_rope = tl.dot(qr, tl.trans(kr))
    ds_sum = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for br in tl.static_range(NBC):
        dq, ds_sum = _dq_branch(dq, ds_sum, q, do, s_rope, kn_ptrs + br * s_kn_n,
                                v_ptrs + br * s_v_n, lse_ptrs + br * HT, dl_ptrs + br * HT,
                                offs_m, offs_n, n_ok, m_ok, qk_scale, out_scale, CAUSAL)
    dqr = tl.dot(ds_sum.to(kr.dtype), kr, dqr)
    return dq, dqr


@triton.jit
def _dq_kernel(
    Qn, Qr, Kn, V, Kr, DO, LSE, DELTA, DQn, DQr,
    s_qn_b, s_qn_t, s_qn_h, s_qr_b, s_qr_t, s_qr_h,
    s_kn_b, s_kn_s, s_kn_n, s_kn_h, s_v_b, s_v_s, s_v_n, s_v_h, s_kr_b, s_kr_s,
    s_do_b, s_do_t, s_do_h,
    T, H, qk_scale, scale, out_scale,
    NB: tl.constexpr, NBC: tl.constexpr, GROUP: tl.constexpr,
    DH: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ (NoPE and RoPE parts) of one block of query rows of one head, all branches."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, DH)
    offs_r = tl.arange(0, DR)
    offs_v = tl.arange(0, DV)
    m_ok = offs_m < T
    q = tl.load(Qn + b * s_qn_b + h * s_qn_h + offs_m[:, None] * s_qn_t + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    qr = tl.load(Qr + b * s_qr_b + h * s_qr_h + offs_m[:, None] * s_qr_t + offs_r[None, :],
                 mask=m_ok[:, None], other=0.0)
    do = tl.load(DO + b * s_do_b + h * s_do_h + offs_m[:, None] * s_do_t + offs_v[None, :],
                 mask=m_ok[:, None], other=0.0)
    kr_base = Kr + b * s_kr_b + offs_r[None, :]
    HT = H * T
    dq = tl.zeros([BLOCK_M, DH], dtype=tl.float32)
    dqr = tl.zeros([BLOCK_M, DR], dtype=tl.float32)
    lo = pid_m * BLOCK_M
    hi = tl.minimum(lo + BLOCK_M, T)
    for chunk in range(NB // NBC):  # chunks of NBC branches that share the RoPE scores
        br0 = chunk * NBC
        kn_base = Kn + b * s_kn_b + hk * s_kn_h + br0 * s_kn_n + offs_d[None, :]
        v_base = V + b * s_v_b + hk * s_v_h + br0 * s_v_n + offs_v[None, :]
        lse_ptrs = LSE + ((b * NB + br0) * H + h) * T + offs_m
        dl_ptrs = DELTA + ((b * NB + br0) * H + h) * T + offs_m
        for start_n in range(0, lo, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            dq, dqr = _dq_tile(dq, dqr, q, qr, do, kn_base + offs_n[:, None] * s_kn_s,
                               v_base + offs_n[:, None] * s_v_s,
                               kr_base + offs_n[:, None] * s_kr_s, lse_ptrs, dl_ptrs, s_kn_n,
                               s_v_n, HT, offs_m, offs_n, offs_n < T, m_ok, qk_scale,
                               out_scale, NBC, BLOCK_M, BLOCK_N, False)
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            dq, dqr = _dq_tile(dq, dqr, q, qr, do, kn_base + offs_n[:, None] * s_kn_s,
                               v_base + offs_n[:, None] * s_v_s,
                               kr_base + offs_n[:, None] * s_kr_s, lse_ptrs, dl_ptrs, s_kn_n,
                               s_v_n, HT, offs_m, offs_n, offs_n < T, m_ok, qk_scale,
                               out_scale, NBC, BLOCK_M, BLOCK_N, True)
    row = b * T * H + offs_m[:, None] * H + h  # dQ outputs are contiguous [B, T, H, *]
    tl.store(DQn + row * DH + offs_d[None, :], (dq * scale).to(DQn.dtype.element_ty),
             mask=m_ok[:, None])
    tl.store(DQr + row * DR + offs_r[None, :], (dqr * scale).to(DQr.dtype.element_ty),
             mask=m_ok[:, None])


@triton.jit
def _dkv_step(dk, dv, dkr, k, v, kr, q_ptrs, qr_ptrs, do_ptrs, lse_ptrs, dl_ptrs, offs_m,
              offs_n, T, qk_scale, out_scale, CAUSAL: tl.constexpr):
    """One block of query rows against a program's key block (one branch, one head)."""
    m_ok = offs_m < T
    q = tl.load(q_ptrs, mask=m_ok[:, None], other=0.0)
    qr = tl.load(qr_ptrs, mask=m_ok[:, None], other=0.0)
    do = tl.load(do_ptrs, mask=m_ok[:, None], other=0.0)
    lse = tl.load(lse_ptrs, mask=m_ok, other=float("inf"))
    dl = tl.load(dl_ptrs, mask=m_ok, other=0.0)
    st = tl.dot(kr, tl.trans(qr))
    st = tl.dot(k, tl.trans(q), st)
    pt = tl.math.exp2(st * qk_scale - lse[None, :])
    if CAUSAL:
        pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
    dv = tl.dot(pt.to(do.dtype), do, dv)
    dpt = tl.dot(v, tl.trans(do))
    dst = (pt * (dpt * out_scale - dl[None, :])).to(q.dtype)
    dk = tl.dot(dst, q, dk)
    dkr = tl.dot(dst, qr, dkr)
    return dk, dv, dkr


@triton.jit
def _dkv_kernel(
    Qn, Qr, Kn, V, Kr, DO, LSE, DELTA, DKV, DKR,
    s_qn_b, s_qn_t, s_qn_h, s_qr_b, s_qr_t, s_qr_h,
    s_kn_b, s_kn_s, s_kn_n, s_kn_h, s_v_b, s_v_s, s_v_n, s_v_h, s_kr_b, s_kr_s,
    s_do_b, s_do_t, s_do_h,
    T, H, HKV, qk_scale, scale, out_scale,
    NB: tl.constexpr, GROUP: tl.constexpr,
    DH: tl.constexpr, DR: tl.constexpr, DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK_b, dV_b and a partial RoPE-key gradient of one key block, one branch, one KV head."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    br = tl.program_id(2)
    b = (pid_bh // HKV).to(tl.int64)
    hk = pid_bh % HKV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DH)
    offs_r = tl.arange(0, DR)
    offs_v = tl.arange(0, DV)
    n_ok = offs_n < T
    k = tl.load(Kn + b * s_kn_b + br * s_kn_n + hk * s_kn_h + offs_n[:, None] * s_kn_s
                + offs_d[None, :], mask=n_ok[:, None], other=0.0)
    v = tl.load(V + b * s_v_b + br * s_v_n + hk * s_v_h + offs_n[:, None] * s_v_s
                + offs_v[None, :], mask=n_ok[:, None], other=0.0)
    kr = tl.load(Kr + b * s_kr_b + offs_n[:, None] * s_kr_s + offs_r[None, :],
                 mask=n_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, DH], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV], dtype=tl.float32)
    dkr = tl.zeros([BLOCK_N, DR], dtype=tl.float32)
    lo = pid_n * BLOCK_N
    diag_end = tl.minimum(lo + BLOCK_N, T)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Qn + b * s_qn_b + h * s_qn_h + offs_d[None, :]
        qr_base = Qr + b * s_qr_b + h * s_qr_h + offs_r[None, :]
        do_base = DO + b * s_do_b + h * s_do_h + offs_v[None, :]
        stat = ((b * NB + br) * H + h) * T
        for start_m in range(lo, diag_end, BLOCK_M):  # diagonal blocks: causal mask
            offs_m = start_m + tl.arange(0, BLOCK_M)
            dk, dv, dkr = _dkv_step(dk, dv, dkr, k, v, kr, q_base + offs_m[:, None] * s_qn_t,
                                    qr_base + offs_m[:, None] * s_qr_t,
                                    do_base + offs_m[:, None] * s_do_t, LSE + stat + offs_m,
                                    DELTA + stat + offs_m, offs_m, offs_n, T, qk_scale,
                                    out_scale, True)
        for start_m in range(lo + BLOCK_N, T, BLOCK_M):  # blocks fully above: no causal mask
            offs_m = start_m + tl.arange(0, BLOCK_M)
            dk, dv, dkr = _dkv_step(dk, dv, dkr, k, v, kr, q_base + offs_m[:, None] * s_qn_t,
                                    qr_base + offs_m[:, None] * s_qr_t,
                                    do_base + offs_m[:, None] * s_do_t, LSE + stat + offs_m,
                                    DELTA + stat + offs_m, offs_m, offs_n, T, qk_scale,
                                    out_scale, False)
    # outputs: [dK | dV] packed, contiguous [B, S, NB, HKV, DH + DV]; partial RoPE-key
    # gradients [B, S, NB * HKV, DR] (summed by the caller)
    row = ((b * T + offs_n[:, None]) * NB + br) * HKV + hk
    tl.store(DKV + row * (DH + DV) + offs_d[None, :], (dk * scale).to(DKV.dtype.element_ty),
             mask=n_ok[:, None])
    tl.store(DKV + row * (DH + DV) + DH + offs_v[None, :],
             (dv * out_scale).to(DKV.dtype.element_ty), mask=n_ok[:, None])
    tl.store(DKR + row * DR + offs_r[None, :], dkr * scale, mask=n_ok[:, None])


# ------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------
def _shapes(q_nope, q_rope, kv):
    B, T, H, DH = q_nope.shape
    NB, HKV = kv.shape[2], kv.shape[3]
    return B, T, H, DH, q_rope.shape[-1], kv.shape[-1] - DH, NB, HKV


def _strides(q_nope, q_rope, kv, k_rope) -> list[int]:
    s_kv = kv.stride()[:4]
    return [*q_nope.stride()[:3], *q_rope.stride()[:3], *s_kv, *s_kv, *k_rope.stride()[:2]]


def _chunk(nb: int, per_program: int | None) -> int:
    """Branches per chunk: the largest divisor of ``nb`` not above the request (default all,
    at most four)."""
    c = min(nb, per_program or MAX_BRANCHES_PER_PROGRAM, MAX_BRANCHES_PER_PROGRAM)
    while nb % c:
        c -= 1
    return c


def forward(q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, k_rope: torch.Tensor,
            scale: float, out_scale: float, config: TrainKernelConfig | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output ``[B, T, H, DV]``, per-branch outputs ``[B, T, NB, H, DV]`` (empty for one
    branch: the backward then uses the output) and log2-domain LSE ``[B, NB, H, T]`` (fp32)."""
    B, T, H, DH, DR, DV, NB, HKV = _shapes(q_nope, q_rope, kv)
    cfg = config or default_config(NB)
    store_ob = NB > 1
    dev = q_nope.device
    o = torch.empty(B, T, H, DV, dtype=q_nope.dtype, device=dev)
    ob = torch.empty(B, T, NB, H, DV, dtype=q_nope.dtype, device=dev) if store_ob else \
        torch.empty(0, dtype=q_nope.dtype, device=dev)
    lse = torch.empty(B, NB, H, T, dtype=torch.float32, device=dev)
    s_ob = ob.stride() if store_ob else (0, 0, 0, 0, 0)
    _fwd_kernel[(triton.cdiv(T, cfg.fwd_block_m), B * H)](
        q_nope, q_rope, kv, kv[..., DH:], k_rope, o, ob, lse,
        *_strides(q_nope, q_rope, kv, k_rope), *o.stride()[:3], *s_ob[:4],
        T, H, scale * LOG2E, out_scale,
        NB=NB, NBC=_chunk(NB, cfg.branches_per_program), GROUP=H // HKV, DH=DH, DR=DR, DV=DV,
        BLOCK_M=cfg.fwd_block_m, BLOCK_N=cfg.fwd_block_n, STORE_OB=store_ob,
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )
    return o, ob, lse


def backward(do: torch.Tensor, q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor,
             k_rope: torch.Tensor, o: torch.Tensor, ob: torch.Tensor, lse: torch.Tensor,
             scale: float, out_scale: float, config: TrainKernelConfig | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq_nope, dq_rope, dkv, dk_rope), contiguous, in the input dtypes."""
    B, T, H, DH, DR, DV, NB, HKV = _shapes(q_nope, q_rope, kv)
    cfg = config or default_config(NB)
    dev = q_nope.device
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = torch.empty(B, NB, H, T, dtype=torch.float32, device=dev)
    if NB > 1:
        x, s_x, mult = ob, ob.stride(), out_scale
    else:
        x, s_x, mult = o, (o.stride(0), o.stride(1), 0, o.stride(2)), 1.0
    _delta_kernel[(triton.cdiv(T, 64), B * H)](
        do, x, delta, *do.stride()[:3], *s_x[:4], T, H, mult,
        NB=NB, DV=DV, BLOCK_M=64, num_warps=4,
    )
    strides = _strides(q_nope, q_rope, kv, k_rope)
    dq_nope = torch.empty(B, T, H, DH, dtype=q_nope.dtype, device=dev)
    dq_rope = torch.empty(B, T, H, DR, dtype=q_rope.dtype, device=dev)
    _dq_kernel[(triton.cdiv(T, cfg.dq_block_m), B * H)](
        q_nope, q_rope, kv, kv[..., DH:], k_rope, do, lse, delta, dq_nope, dq_rope,
        *strides, *do.stride()[:3], T, H, scale * LOG2E, scale, out_scale,
        NB=NB, NBC=_chunk(NB, cfg.dq_branches_per_program), GROUP=H // HKV,
        DH=DH, DR=DR, DV=DV, BLOCK_M=cfg.dq_block_m, BLOCK_N=cfg.dq_block_n,
        num_warps=cfg.dq_warps, num_stages=cfg.dq_stages,
    )
    dkv = torch.empty(B, T, NB, HKV, DH + DV, dtype=kv.dtype, device=dev)
    dkr_part = torch.empty(B, T, NB * HKV, DR, dtype=torch.float32, device=dev)
    _dkv_kernel[(triton.cdiv(T, cfg.dkv_block_n), B * HKV, NB)](
        q_nope, q_rope, kv, kv[..., DH:], k_rope, do, lse, delta, dkv, dkr_part,
        *strides, *do.stride()[:3], T, H, HKV, scale * LOG2E, scale, out_scale,
        NB=NB, GROUP=H // HKV, DH=DH, DR=DR, DV=DV,
        BLOCK_M=cfg.dkv_block_m, BLOCK_N=cfg.dkv_block_n,
        num_warps=cfg.dkv_warps, num_stages=cfg.dkv_stages,
    )
    dk_rope = dkr_part.sum(2).to(k_rope.dtype)
    return dq_nope, dq_rope, dkv, dk_rope
