"""The fused forms of :meth:`~mlra.model.Block.pre` and :meth:`~mlra.model.Block.post` for
paged decode steps: each layer as a handful of kernel launches instead of dozens.

Per layer (latent family): the attention norm and every projection reading its output in one
launch, the query norm and up-projection in one, the cache row / RoPE / absorbed queries in
one, the attention kernel and its split merge, ``W_UV`` with the branch sum in one, the output
projection with the residual in one, the MLP norm with gate and up in one, the down projection
with the residual in one. The standard family (MHA/MQA/GQA) the same with one RoPE / cache-write
launch. The operations are those of :mod:`mlra.kernels` (Triton on CUDA, the torch references
elsewhere: on a CPU a fused step computes what the module-by-module step computes).

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


MERGE_IN_UP = False
"""Merge the attention kernel's split partials inside the W_UV launch (one launch fewer per
layer). Off: at batch 1 every W_UV program re-reads its head's partials of all splits, which
measured slower on the H200 (27 us per layer at 8K) than the merge kernel plus W_UV."""

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


def fused_attend(ctx, block: Block, q, state) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The context's attention; for one group of latent heads (MLA, MLRA-B) the kernel's
    split-KV partials unmerged, so that :func:`fused_post` merges them inside its W_UV launch
    (the cache entries were written by :func:`fused_pre`)."""
    attn = block.attn
    if not MERGE_IN_UP or attn.cfg.family != "latent" or attn.groups != 1 or attn.branches > 4:
        return type(ctx).attend(ctx, block, q, state)
    q_abs, q_rope = q
    layout = ctx.cache.layout
    o_ws, lse_ws = kernels.paged_latent_decode(
        q_abs[:, :, :, 0], q_rope[:, :, 0], ctx.cache.pools[block.index]["rows"],
        ctx.block_table, ctx.seq_lens, layout.latent_offsets, layout.rope_offset,
        attn.cfg.softmax_scale, keep_splits=True)
    return o_ws.unsqueeze(4), lse_ws.unsqueeze(4)  # [splits, B, T, branches, groups=1, ...]


def fused_post(block: Block, x: torch.Tensor, h: torch.Tensor, o: torch.Tensor,
               decode_form: bool = True) -> torch.Tensor:
    """:meth:`Block.post` of a paged decode step: head outputs, output projection, residual,
    MLP (the residual adds fused into the projections unless ``block.reduce`` all-reduces)."""
    attn, cfg, mlp = block.attn, block.attn.cfg, block.mlp
    if isinstance(o, tuple):  # split partials from fused_attend
        o = kernels.latent_merge_up_output(*o, attn.wkv_b(), attn.out_scale, cfg.head_dim)
    elif cfg.family == "latent":
        o = kernels.latent_up_output(o, attn.wkv_b(), attn.out_scale, cfg.head_dim)
    else:
        o = attn.decode_output(o)  # fp32 head outputs: rounded inside the projection
    local = block.reduce is _identity
    if local:
        (x,) = kernels.skinny_linear(o, [attn.wo.weight], residual=x)
    else:
        x = x + block.reduce(kernels.skinny_linear(o, [attn.wo.weight])[0])
    norm = block.mlp_norm
    (act,) = kernels.skinny_linear(x, [mlp.w_gate.weight, mlp.w_up.weight],
                                   norm_weight=norm.weight, eps=norm.eps, swiglu=True)
    if local:
        return kernels.skinny_linear(act, [mlp.w_down.weight], residual=x)[0]
    return x + block.reduce(kernels.skinny_linear(act, [mlp.w_down.weight])[0])


def fused_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The final norm and the tied output head of ``model`` in one small-batch launch
    (:meth:`Transformer.logits` of ``model.norm(hidden)``)."""
    norm = model.norm
    return kernels.skinny_linear(hidden, [model.embed.weight], norm_weight=norm.weight,
                                 eps=norm.eps)[0]
