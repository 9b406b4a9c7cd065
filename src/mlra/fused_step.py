"""The fused forms of :meth:`~mlra.model.Block.pre` and :meth:`~mlra.model.Block.post` for
paged decode steps: each layer as a handful of kernel launches instead of dozens.

Per layer (latent family): the attention norm and every projection reading its output in one
launch, the query norm and up-projection in one, the cache row / RoPE / absorbed queries in
one, the attention kernel and its split merge, ``W_UV`` with the branch sum in one, the output
projection with the residual in one, and the MLP (norm, gate and up, down, residual) in one at
batch 1 (:func:`mlra.kernels.swiglu_mlp`; its down weight stored column-major by
:func:`prepare_fused`), as two launches (norm with gate and up; down with the residual) above.
The standard family (MHA/MQA/GQA) the same with one RoPE / cache-write launch. The
operations are those of :mod:`mlra.kernels` (Triton on CUDA, the torch references elsewhere:
on a CPU a fused step computes what the module-by-module step computes).

Families or options without a fused form (GTA, MFA, TPA, an output gate) keep the
module-by-module forms; :func:`fused_supported` says which.
"""

from __future__ import annotations

import torch

from mlra import kernels
from mlra.layers import Rotary, rope_inv_freq
from mlra.model import Block, _identity


def fused_supported(block: Block) -> bool:
    """Whether ``block`` has a fused decode form: latent family (MLA/GLA/MLRA) or standard
    family (MHA/MQA/GQA), no output gate."""
    cfg = block.attn.cfg
    if cfg.output_gate:
        return False
    return cfg.family == "latent" or (cfg.family == "standard" and block.attn.layout.direct_kv)


_INV_FREQ: dict[tuple[int, float, torch.device], torch.Tensor] = {}


def _inv_freq(width: int, base: float, device: torch.device) -> torch.Tensor:
    """RoPE frequencies on ``device``, made once (the kernels compute the angles)."""
    key = (width, float(base), device)
    if key not in _INV_FREQ:
        _INV_FREQ[key] = rope_inv_freq(width, base, device)
    return _INV_FREQ[key]


def fused_pre(ctx, block: Block, x: torch.Tensor, rope: Rotary, decode_form: bool = True):
    """:meth:`Block.pre` of a paged decode step, the new tokens' cache entries written here (at
    ``ctx.slots`` of the block's pools), so the returned state is empty."""
    attn, cfg = block.attn, block.attn.cfg
    pools = ctx.cache.pools[block.index]
    norm = block.attn_norm
    if cfg.family == "latent":
        c_q, c_kv = kernels.skinny_linear(x, [attn.wq_a.weight, attn.wkv_a.weight],
                                          norm_weight=norm.weight, eps=norm.eps)
        (q,) = kernels.skinny_linear(c_q, [attn.wq_b.weight], norm_weight=attn.q_norm.weight,
                                     eps=attn.q_norm.eps, in_scale=attn.q_scale)
        inv_freq = _inv_freq(cfg.rope_dim, rope.base, x.device)
        query = kernels.latent_decode_prepare(
            q, c_kv, rope.positions, inv_freq, attn.kv_norm, attn.kv_scale, attn.wkv_b(),
            pools["rows"], ctx.slots, attn.branches, cfg.head_dim, cfg.norm_eps)
        return x, query, {}
    q, k, v = kernels.skinny_linear(x, [attn.wq.weight, attn.wk.weight, attn.wv.weight],
                                    norm_weight=norm.weight, eps=norm.eps)
    inv_freq = _inv_freq(cfg.head_dim, rope.base, x.device)
    q = kernels.gqa_decode_prepare(q, k, v, rope.positions, inv_freq, pools["k"], pools["v"],
                                   ctx.slots, cfg.head_dim)
    return x, q, {}


def fused_post(block: Block, x: torch.Tensor, h: torch.Tensor, o: torch.Tensor,
               decode_form: bool = True) -> torch.Tensor:
    """:meth:`Block.post` of a paged decode step: head outputs, output projection, residual,
    MLP (the residual adds fused into the projections unless ``block.reduce`` all-reduces)."""
    attn, cfg, mlp = block.attn, block.attn.cfg, block.mlp
    if cfg.family == "latent":
        o = kernels.latent_up_output(o, attn.wkv_b(), attn.out_scale, cfg.head_dim)
    else:
        o = attn.decode_output(o)  # fp32 head outputs: rounded inside the projection
    local = block.reduce is _identity
    norm = block.mlp_norm
    weights = (mlp.w_gate.weight, mlp.w_up.weight, mlp.w_down.weight)
    if local:  # the MLP's first weights fetched into L2 as the projection finishes
        (x,) = kernels.skinny_linear(o, [attn.wo.weight], residual=x,
                                     next_reads=kernels.mlp_next_reads(x, norm.weight, *weights))
    else:
        x = x + block.reduce(kernels.skinny_linear(o, [attn.wo.weight])[0])
    if local:
        return kernels.swiglu_mlp(x, norm.weight, norm.eps, *weights, residual=x)
    return x + block.reduce(kernels.swiglu_mlp(x, norm.weight, norm.eps, *weights))


def prepare_fused(model) -> None:
    """Lay out ``model``'s weights for the fused step's kernels, in place: each MLP's down
    weight stored column-major (same values and shape; ``w.t()`` contiguous), which the
    one-launch MLP kernel of batch-1 steps streams (:func:`mlra.kernels.mlp_kernel_wanted`).
    The modules compute the same with either layout; saving makes tensors contiguous.
    Idempotent; nothing happens off CUDA or with ``MLRA_MLP_KERNEL=0``."""
    for block in model.layers:
        w = block.mlp.w_down.weight
        if kernels.mlp_kernel_wanted(w) and not kernels.column_major(w):
            with torch.no_grad():
                w.data = w.data.t().contiguous().t()


def fused_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The final norm and the tied output head of ``model`` in one small-batch launch
    (:meth:`Transformer.logits` of ``model.norm(hidden)``)."""
    norm = model.norm
    return kernels.skinny_linear(hidden, [model.embed.weight], norm_weight=norm.weight,
                                 eps=norm.eps)[0]
