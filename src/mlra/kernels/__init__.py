"""Paged decode kernels and the fused training attention: Triton on CUDA, the PyTorch
references everywhere else.

``paged_latent_decode``, ``paged_gqa_decode`` and ``paged_tpa_decode`` take the signatures
documented in :mod:`mlra.kernels.reference`; the dispatch picks the Triton kernel
(:mod:`mlra.kernels.triton_latent`, :mod:`mlra.kernels.triton_gqa`,
:mod:`mlra.kernels.triton_tpa`) when the cache is on a CUDA device, Triton is importable and the
shapes are ones the kernels take (:func:`latent_kernel_supports`, :func:`gqa_kernel_supports`,
:func:`tpa_kernel_supports`), the reference otherwise. On Hopper the latent family's 256- and
512-wide streams go to the Gluon kernel (:mod:`mlra.kernels.gluon_latent`,
:func:`gluon_latent_wanted`; ``MLRA_GLUON_LATENT=0`` keeps Triton).
The decode-step operations around the attention kernel (``skinny_linear``,
``latent_decode_prepare``, ``latent_up_output``, ``gqa_decode_prepare``) dispatch the same way
(:mod:`mlra.kernels.triton_skinny`, :mod:`mlra.kernels.triton_step`); on Hopper one-row
projections whose weights fit in shared memory go to :mod:`mlra.kernels.gluon_skinny`
(``MLRA_SKINNY_RESIDENT=0`` keeps Triton).
``latent_train_attention`` (causal training attention of the latent family, differentiable)
picks :mod:`mlra.kernels.triton_latent_train` under the same conditions
(:func:`train_kernel_supports`); the model's SDPA path stays the fallback. Importing this
package never imports Triton. Set ``MLRA_DISABLE_TRITON=1`` to force the references (the
decode references; the SDPA path in training). On Hopper the decode-step kernels launch with
programmatic dependent launch and an L2 prefetch of their weights
(:func:`mlra.kernels._triton_common.pdl_mode`): ``MLRA_PDL=0`` launches them plainly,
``MLRA_PDL_PREFETCH=0`` keeps PDL without the prefetch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence

import torch

from mlra.kernels.hints import NextReads
from mlra.kernels.reference import (
    decode_slots_ref,
    gqa_decode_prepare_ref,
    latent_decode_prepare_ref,
    latent_train_attention_ref,
    latent_up_output_ref,
    paged_gqa_decode_ref,
    paged_latent_decode_ref,
    paged_tpa_decode_ref,
    skinny_linear_ref,
    swiglu_mlp_ref,
)
from mlra.kernels.train_ops import (
    latent_train_attention_fused,
    latent_train_attention_up_fused,
    up_project,
)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton can be imported (it is never imported by this check's caller)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as absent
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """Whether the dispatch sends a call on tensor ``t`` to Triton."""
    return t.is_cuda and os.environ.get("MLRA_DISABLE_TRITON", "0") in ("", "0") and \
        triton_available()


_KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def triton_decodes(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether a cache of ``dtype`` on ``device`` decodes through the Triton kernels (for
    the shapes they take): the path a CUDA graph can capture (the references synchronise with
    the host)."""
    device = torch.device(device)
    return (device.type == "cuda" and dtype in _KERNEL_DTYPES
            and os.environ.get("MLRA_DISABLE_TRITON", "0") in ("", "0") and triton_available())


def latent_kernel_supports(q_latent: torch.Tensor, q_rope: torch.Tensor, cache: torch.Tensor
                           ) -> bool:
    """Shapes the Triton latent kernel takes (others go to the reference): bf16/fp16 cache,
    latent width <= 512, power-of-two RoPE width >= 16, page size a multiple of 16."""
    r = q_rope.shape[-1]
    return (cache.dtype in _KERNEL_DTYPES and q_latent.shape[-1] <= 512 and r >= 16
            and r & (r - 1) == 0 and cache.shape[1] % 16 == 0 and cache.stride(-1) == 1)


GLUON_LATENT_ENV = "MLRA_GLUON_LATENT"
"""Set to 0 to decode the latent family with the Triton kernel on Hopper too."""
GLUON_MIN_WIDTH = 256
"""The narrowest latent stream the dispatch sends to the Gluon kernel (see
:func:`gluon_latent_wanted`)."""


_GLUON_FAILURE: list[str] = []


def _compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says a kernel could not be built here (Gluon is experimental and its
    interface changes between Triton versions), as opposed to a bad call."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    return isinstance(exc, CompilationError | OutOfResources)


def _gluon_failed(exc: BaseException) -> None:
    """Turn the Gluon kernel off for this process after it failed to build, with one warning
    that says why and how to silence it."""
    import warnings

    _GLUON_FAILURE.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
    warnings.warn(f"the Gluon latent decode kernel failed to build with this Triton "
                  f"({_GLUON_FAILURE[-1]}); using the Triton kernel instead (set "
                  f"{GLUON_LATENT_ENV}=0 to skip the attempt)", RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=1)
def gluon_available() -> bool:
    """Whether this Triton has Gluon's Hopper pieces (TMA, mbarriers, wgmma, warp
    specialisation) that :mod:`mlra.kernels.gluon_latent` uses."""
    if not triton_available():
        return False
    try:
        import mlra.kernels.gluon_latent  # noqa: F401
    except Exception:  # an older Triton: the Triton kernel serves
        return False
    return True


def gluon_latent_wanted(q_latent: torch.Tensor, q_rope: torch.Tensor, cache: torch.Tensor
                        ) -> bool:
    """Whether :func:`paged_latent_decode` sends this call to the Gluon kernel: a Hopper GPU,
    shapes it takes (:func:`mlra.kernels.gluon_latent.gluon_latent_supports`) with streams at
    least :data:`GLUON_MIN_WIDTH` wide, Gluon in this Triton and not failed to build in this
    process, :data:`GLUON_LATENT_ENV` not 0.

    128-wide streams (MLRA-4) stay on the Triton kernel, which measured faster there on the
    H200 at 1M tokens (MLRA-4 at TP 4: 117.6 us against 125.2 for the best Gluon form;
    ``benchmarks/decode/results/h200/gluon/call3``); for 256-wide streams (GLA-2 at TP 2) the
    Gluon kernel takes 174.8 against 186.9 us (call 3), for MLA's 512 338.0 against 530.3 us
    (call 2)."""
    if os.environ.get(GLUON_LATENT_ENV, "1") in ("", "0"):
        return False
    if q_latent.shape[-1] < GLUON_MIN_WIDTH or _GLUON_FAILURE:
        return False
    if not gluon_available():
        return False
    from mlra.kernels.gluon_latent import gluon_latent_supports

    return gluon_latent_supports(q_latent, q_rope, cache)


def gqa_kernel_supports(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Shapes the Triton GQA kernel takes: bf16/fp16 caches, head dims <= 256, page % 16 == 0."""
    return (k_cache.dtype in _KERNEL_DTYPES and v_cache.dtype == k_cache.dtype
            and q.shape[-1] <= 256 and v_cache.shape[-1] <= 256 and k_cache.shape[1] % 16 == 0
            and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1)


def paged_latent_decode(
    q_latent: torch.Tensor,
    q_rope: torch.Tensor,
    cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    latent_offsets: Sequence[int],
    rope_offset: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed latent attention over a paged cache (see :func:`paged_latent_decode_ref`):
    the Gluon kernel on Hopper where it takes the shapes (:func:`gluon_latent_wanted`), else
    the Triton kernel, else the reference."""
    if use_triton(cache) and gluon_latent_wanted(q_latent, q_rope, cache):
        from mlra.kernels.gluon_latent import paged_latent_decode_gluon

        try:
            return paged_latent_decode_gluon(q_latent, q_rope, cache, block_table, seq_lens,
                                             latent_offsets, rope_offset, scale)
        except Exception as exc:
            if not _compile_failure(exc):
                raise
            _gluon_failed(exc)  # the Triton kernel below serves from now on
    if use_triton(cache) and latent_kernel_supports(q_latent, q_rope, cache):
        from mlra.kernels.triton_latent import paged_latent_decode_triton

        return paged_latent_decode_triton(q_latent, q_rope, cache, block_table, seq_lens,
                                          latent_offsets, rope_offset, scale)
    return paged_latent_decode_ref(q_latent, q_rope, cache, block_table, seq_lens,
                                   latent_offsets, rope_offset, scale)


def paged_gqa_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA/MQA attention over paged K/V caches (see :func:`paged_gqa_decode_ref`)."""
    if use_triton(k_cache) and gqa_kernel_supports(q, k_cache, v_cache):
        from mlra.kernels.triton_gqa import paged_gqa_decode_triton

        return paged_gqa_decode_triton(q, k_cache, v_cache, block_table, seq_lens, scale)
    return paged_gqa_decode_ref(q, k_cache, v_cache, block_table, seq_lens, scale)


def tpa_kernel_supports(q: torch.Tensor, a_k: torch.Tensor, b_k: torch.Tensor, a_v: torch.Tensor,
                        b_v: torch.Tensor) -> bool:
    """Shapes the Triton TPA kernel takes: four bf16/fp16 factor pools of one dtype, head dim
    <= 256, rank <= 16, page size a multiple of 16, contiguous ``b`` rows."""
    return (b_k.dtype in _KERNEL_DTYPES and all(x.dtype == b_k.dtype for x in (a_k, a_v, b_v))
            and q.shape[-1] <= 256 and a_k.shape[-1] <= 16 and a_k.shape[1] % 16 == 0
            and b_k.stride(-1) == 1 and b_v.stride(-1) == 1)


def paged_tpa_decode(
    q: torch.Tensor,
    a_k: torch.Tensor,
    b_k: torch.Tensor,
    a_v: torch.Tensor,
    b_v: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    value_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over paged tensor-product factors (see :func:`paged_tpa_decode_ref`)."""
    if use_triton(b_k) and tpa_kernel_supports(q, a_k, b_k, a_v, b_v):
        from mlra.kernels.triton_tpa import paged_tpa_decode_triton

        return paged_tpa_decode_triton(q, a_k, b_k, a_v, b_v, block_table, seq_lens, scale,
                                       value_scale)
    return paged_tpa_decode_ref(q, a_k, b_k, a_v, b_v, block_table, seq_lens, scale,
                                value_scale)


SKINNY_MAX_ROWS = 16
"""The most rows (batch x new tokens) :func:`skinny_linear` always sends to its Triton kernel.
Above, up to the kernel's own limit (:data:`mlra.kernels.triton_skinny.MAX_ROWS`), it does so
only for the shapes the tuned table lists for this GPU at that row block (tuned faster than
the norm + cuBLAS path: at 32 rows on the H200 the down projection and the head stay on
cuBLAS, ``benchmarks/e2e_decode/results/h200/stages``)."""


def skinny_supports(x: torch.Tensor, weights: Sequence[torch.Tensor],
                    swiglu: bool = False) -> bool:
    """Shapes the Triton small-batch matrix product takes: bf16/fp16, at most
    :data:`SKINNY_MAX_ROWS` rows (more for a shape tuned on this GPU), weights of one dtype
    with contiguous rows (``x`` of that dtype or fp32)."""
    rows = x.numel() // max(1, x.shape[-1])
    dtype = weights[0].dtype if weights else x.dtype
    if not (dtype in _KERNEL_DTYPES and x.dtype in (dtype, torch.float32)
            and all(w.dtype == dtype and w.dim() == 2 and w.stride(-1) == 1
                    and w.shape[1] == x.shape[-1] for w in weights)):
        return False
    if rows <= SKINNY_MAX_ROWS:
        return True
    from mlra.kernels.triton_skinny import MAX_ROWS, tuned_for_rows

    return rows <= MAX_ROWS and tuned_for_rows(x.device, rows, x.shape[-1],
                                               [w.shape[0] for w in weights], swiglu)


def skinny_linear(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    in_scale: float = 1.0,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    next_reads: NextReads | None = None,
) -> tuple[torch.Tensor, ...]:
    """Small-batch projections of one input, normed first (see :func:`skinny_linear_ref`).
    ``next_reads``: what the next launch reads first, fetched into L2 by the kernels that can
    once their own weights are in (a hint; the result does not depend on it)."""
    if use_triton(x) and len(weights) <= 3 and skinny_supports(x, weights, swiglu):
        if x.is_cuda and gluon_available():
            from mlra.kernels.gluon_skinny import dispatch_resident

            out = dispatch_resident(x, weights, norm_weight=norm_weight, eps=eps,
                                    in_scale=in_scale, residual=residual, swiglu=swiglu,
                                    next_reads=next_reads)
            if out is not None:  # Hopper, one row, weights that fit
                return out
        from mlra.kernels.triton_skinny import skinny_linear_triton

        return skinny_linear_triton(x, weights, norm_weight=norm_weight, eps=eps,
                                    in_scale=in_scale, residual=residual, swiglu=swiglu)
    return skinny_linear_ref(x, weights, norm_weight=norm_weight, eps=eps, in_scale=in_scale,
                             residual=residual, swiglu=swiglu)


MLP_KERNEL_ENV = "MLRA_MLP_KERNEL"
"""Set to 0 to keep the MLP of batch-1 decode steps as two launches (gate/up, down) instead of
the one-launch kernel (:func:`swiglu_mlp`); read when a decode step lays out its weights."""


MLP_MAX_WIDTH = 8192
"""The widest model (``d_model``) the one-launch MLP kernel takes: a program holds the normed
input and its partial output in registers, padded to a power of two."""


def column_major(w: torch.Tensor) -> bool:
    """Whether ``w`` (2-D) is stored column-major, i.e. ``w.t()`` is contiguous."""
    return w.dim() == 2 and w.stride(0) == 1 and w.stride(1) == w.shape[0]


def mlp_kernel_wanted(w_down: torch.Tensor) -> bool:
    """Whether batch-1 decode steps with this down weight should run the one-launch MLP kernel
    (a CUDA weight of a kernel dtype, Triton on, :data:`MLP_KERNEL_ENV` not 0); the decode
    step then stores ``w_down`` column-major (:func:`mlra.fused_step.prepare_fused`)."""
    return (use_triton(w_down) and w_down.dtype in _KERNEL_DTYPES and w_down.dim() == 2
            and os.environ.get(MLP_KERNEL_ENV, "1") not in ("", "0")
            and w_down.shape[0] <= MLP_MAX_WIDTH)


def mlp_kernel_supports(x: torch.Tensor, norm_weight: torch.Tensor | None,
                        w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> bool:
    """Shapes the one-launch MLP kernel takes: one row, a norm, bf16/fp16 weights of one dtype
    (``x`` that dtype or fp32), gate and up ``[hidden, d]`` with contiguous rows, ``w_down
    [d, hidden]`` column-major, ``d`` at most :data:`MLP_MAX_WIDTH`."""
    d = x.shape[-1]
    dtype = w_gate.dtype
    return (x.numel() == d and norm_weight is not None and dtype in _KERNEL_DTYPES
            and x.dtype in (dtype, torch.float32)
            and all(w.dtype == dtype and w.dim() == 2 and w.stride(1) == 1
                    and tuple(w.shape) == (w_gate.shape[0], d) for w in (w_gate, w_up))
            and w_down.dtype == dtype and tuple(w_down.shape) == (d, w_gate.shape[0])
            and column_major(w_down) and d <= MLP_MAX_WIDTH)


def swiglu_mlp(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SwiGLU MLP of a decode step (see :func:`swiglu_mlp_ref`): one launch for one row
    with a column-major ``w_down`` (:func:`mlp_kernel_supports`), else the gate/up and down
    projections of :func:`skinny_linear`."""
    if use_triton(x) and mlp_kernel_supports(x, norm_weight, w_gate, w_up, w_down):
        from mlra.kernels.triton_mlp import swiglu_mlp_triton

        return swiglu_mlp_triton(x, norm_weight, eps, w_gate, w_up, w_down, residual)
    (act,) = skinny_linear(x, [w_gate, w_up], norm_weight=norm_weight, eps=eps, swiglu=True)
    return skinny_linear(act, [w_down], residual=residual)[0]


MLP_L2_UNITS_ENV = "MLRA_MLP_L2_UNITS"
"""Hidden units per program of the one-launch MLP that the launch before it (the output
projection) fetches into L2 once its own weights are in (:func:`mlp_next_reads`); 0: none."""


def mlp_next_reads(x: torch.Tensor, norm_weight: torch.Tensor, w_gate: torch.Tensor,
                   w_up: torch.Tensor, w_down: torch.Tensor) -> NextReads | None:
    """What the one-launch MLP kernel's programs read first (their first hidden units' gate,
    up and down rows), for the launch before it to fetch into L2; None where that kernel
    does not take the call or :data:`MLP_L2_UNITS_ENV` asks for none. The ranges are the
    programs' own (:func:`mlra.kernels.triton_mlp.first_reads`: with a run-time tail,
    ``MlpConfig.tail_steps``, the units streamed in fixed ranges)."""
    raw = os.environ.get(MLP_L2_UNITS_ENV, "").strip()
    if raw and not raw.isdigit():
        raise ValueError(f"{MLP_L2_UNITS_ENV}={raw!r}: expected a number of hidden units per "
                         "program (0 or unset: none)")
    units = int(raw or 0)
    if units <= 0 or not (use_triton(x) and x.is_cuda
                          and mlp_kernel_supports(x, norm_weight, w_gate, w_up, w_down)):
        return None
    from mlra.kernels.triton_mlp import first_reads

    return first_reads(x, w_gate, w_up, w_down, units)


def _pow2_width(n: int) -> bool:
    return n >= 2 and n & (n - 1) == 0


def latent_decode_prepare(
    q: torch.Tensor, c_kv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
    kv_norm: torch.Tensor, kv_scale: float, w_up: torch.Tensor, pool: torch.Tensor,
    slots: torch.Tensor, branches: int, head_dim: int, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache write, RoPE and query absorption of the latent family's decode step (see
    :func:`latent_decode_prepare_ref`)."""
    if (use_triton(q) and q.dtype in _KERNEL_DTYPES and pool.is_contiguous()
            and w_up.stride(-1) == 1 and _pow2_width(head_dim)
            and _pow2_width(2 * inv_freq.shape[0]) and kv_norm.is_contiguous()):
        from mlra.kernels.triton_step import latent_decode_prepare_triton

        return latent_decode_prepare_triton(q, c_kv, positions, inv_freq, kv_norm, kv_scale,
                                            w_up, pool, slots, branches, head_dim, eps)
    return latent_decode_prepare_ref(q, c_kv, positions, inv_freq, kv_norm, kv_scale, w_up,
                                     pool, slots, branches, head_dim, eps)


def latent_up_output(
    z: torch.Tensor, w_up: torch.Tensor, out_scale: float, head_dim: int
) -> torch.Tensor:
    """W_UV and the branch sum of the latent family's decode step (see
    :func:`latent_up_output_ref`)."""
    if use_triton(z) and w_up.dtype in _KERNEL_DTYPES and w_up.stride(-1) == 1 \
            and _pow2_width(head_dim):
        from mlra.kernels.triton_step import latent_up_output_triton

        return latent_up_output_triton(z, w_up, out_scale, head_dim)
    return latent_up_output_ref(z, w_up, out_scale, head_dim)


def decode_slots(
    seq_lens: torch.Tensor, block_table: torch.Tensor, new_tokens: int, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and cache rows of a decode step's new tokens (see :func:`decode_slots_ref`)."""
    if use_triton(seq_lens) and block_table.stride(-1) == 1:
        from mlra.kernels.triton_step import decode_slots_triton

        return decode_slots_triton(seq_lens, block_table, new_tokens, page_size)
    return decode_slots_ref(seq_lens, block_table, new_tokens, page_size)


def gqa_decode_prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    inv_freq: torch.Tensor,
    k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, head_dim: int,
) -> torch.Tensor:
    """RoPE and cache write of the standard family's decode step (see
    :func:`gqa_decode_prepare_ref`)."""
    if (use_triton(q) and q.dtype in _KERNEL_DTYPES and _pow2_width(head_dim)
            and k_pool.is_contiguous() and v_pool.is_contiguous()):
        from mlra.kernels.triton_step import gqa_decode_prepare_triton

        return gqa_decode_prepare_triton(q, k, v, positions, inv_freq, k_pool, v_pool, slots,
                                         head_dim)
    return gqa_decode_prepare_ref(q, k, v, positions, inv_freq, k_pool, v_pool, slots,
                                  head_dim)


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


@torch.compiler.assume_constant_result
def _triton_enabled() -> bool:
    """Triton importable and not disabled (``MLRA_DISABLE_TRITON``); a constant to
    ``torch.compile``, which re-reads it only when it recompiles."""
    return os.environ.get("MLRA_DISABLE_TRITON", "0") in ("", "0") and triton_available()


def _train_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype the training attention computes in: the CUDA autocast dtype when autocast is
    on, else the query's."""
    if q.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return q.dtype


def _supports(q_nope: torch.Tensor, q_rope: torch.Tensor, k_rope: torch.Tensor,
              kv_shape: tuple[int, ...]) -> bool:
    B, T, H, D = q_nope.shape
    R = q_rope.shape[-1]
    return (q_nope.is_cuda and _triton_enabled() and _train_dtype(q_nope) in _KERNEL_DTYPES
            and all(t.stride(-1) == 1 for t in (q_nope, q_rope, k_rope))
            and all(_pow2(d) and d <= 256 for d in (D, R, kv_shape[-1] - D))
            and len(kv_shape) == 5 and tuple(kv_shape[:2]) == (B, T)
            and tuple(k_rope.shape) == (B, T, R) and H % kv_shape[3] == 0)


def train_kernel_supports(q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor,
                          k_rope: torch.Tensor) -> bool:
    """Whether :func:`latent_train_attention` runs the fused Triton kernel on these inputs:
    a CUDA device with Triton, a bf16/fp16 compute dtype, power-of-two head, RoPE and value
    widths in [16, 256], as many keys as queries (causal self-attention), KV heads dividing
    the query heads, contiguous last dims."""
    return kv.stride(-1) == 1 and _supports(q_nope, q_rope, k_rope, tuple(kv.shape))


def _up_kv_shape(q_nope: torch.Tensor, latent: torch.Tensor, w_up: torch.Tensor,
                 branches: int) -> tuple[int, ...] | None:
    B, S, L, W = latent.shape
    d2 = 2 * q_nope.shape[-1]
    total = L * w_up.shape[-1]
    if tuple(w_up.shape[:2]) != (L, W) or total % (branches * d2):
        return None
    return (B, S, branches, total // (branches * d2), d2)


def up_kernel_supports(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor,
                       w_up: torch.Tensor, k_rope: torch.Tensor, branches: int) -> bool:
    """:func:`train_kernel_supports` for :func:`latent_train_attention_up`."""
    shape = _up_kv_shape(q_nope, latent, w_up, branches)
    return shape is not None and _supports(q_nope, q_rope, k_rope, shape)


def latent_train_attention_up(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    w_up: torch.Tensor,
    k_rope: torch.Tensor,
    branches: int,
    scale: float,
    out_scale: float,
) -> torch.Tensor:
    """:func:`latent_train_attention` of ``kv = up_project(latent, w_up, branches)`` (values
    as wide as the NoPE keys): on the fused path the up-projection runs inside the operator
    and ``kv`` is recomputed in the backward rather than kept (it is the largest activation
    of a many-branch layer)."""
    dt = _train_dtype(q_nope)
    q_nope, q_rope, latent, w_up, k_rope = (t.to(dt) for t in (q_nope, q_rope, latent, w_up,
                                                                k_rope))
    if up_kernel_supports(q_nope, q_rope, latent, w_up, k_rope, branches):
        return latent_train_attention_up_fused(q_nope, q_rope, latent, w_up, k_rope, branches,
                                               scale, out_scale)
    kv = up_project(latent, w_up, branches)
    d2 = 2 * q_nope.shape[-1]
    kv = kv.view(*kv.shape[:3], kv.shape[3] // d2, d2)
    return latent_train_attention_ref(q_nope, q_rope, kv, k_rope, scale, out_scale)


def latent_train_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    kv: torch.Tensor,
    k_rope: torch.Tensor,
    scale: float,
    out_scale: float,
) -> torch.Tensor:
    """Causal training attention of the latent family, differentiable (see
    :func:`latent_train_attention_ref`): the fused Triton kernel where
    :func:`train_kernel_supports`, the reference elsewhere. Inputs are cast to the compute
    dtype (the CUDA autocast dtype under autocast) first."""
    dt = _train_dtype(q_nope)
    q_nope, q_rope, kv, k_rope = (t.to(dt) for t in (q_nope, q_rope, kv, k_rope))
    if train_kernel_supports(q_nope, q_rope, kv, k_rope):
        return latent_train_attention_fused(q_nope, q_rope, kv, k_rope, scale, out_scale)
    return latent_train_attention_ref(q_nope, q_rope, kv, k_rope, scale, out_scale)


__all__ = [
    "latent_train_attention", "latent_train_attention_fused", "latent_train_attention_ref",
    "latent_train_attention_up", "latent_train_attention_up_fused", "train_kernel_supports",
    "up_kernel_supports", "up_project",
    "swiglu_mlp", "swiglu_mlp_ref", "mlp_kernel_supports", "column_major", "mlp_next_reads",
    "NextReads",
    "paged_gqa_decode", "paged_gqa_decode_ref", "paged_latent_decode", "paged_latent_decode_ref",
    "gluon_available", "gluon_latent_wanted", "GLUON_LATENT_ENV",
    "gqa_kernel_supports", "latent_kernel_supports", "triton_available", "use_triton",
    "paged_tpa_decode", "paged_tpa_decode_ref", "tpa_kernel_supports",
]
