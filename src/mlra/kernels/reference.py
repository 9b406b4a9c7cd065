"""PyTorch references of the paged decode kernels (the contract the Triton kernels implement).

Paged cache layout (shared by the cache, the decoders and the kernels):

- Latent family (MLA/GLA/MLRA): one pool per layer, ``cache[num_pages, page_size, row]`` whose
  row is ``[latent head 0 (w) | latent head 1 | ... | rope key (r)]`` -- the latent heads this
  device holds, then the shared RoPE key. MLA's row is [512 | 64] as FlashMLA's.
- Standard family: ``k_cache[num_pages, page_size, kv_heads, d]``, ``v_cache[..., d_v]``.
- Tensor-product factors (TPA): ``a_k`` / ``a_v`` ``[num_pages, page_size, heads, rank]`` and
  ``b_k`` / ``b_v`` ``[num_pages, page_size, rank, d]``.
- ``block_table[batch, max_pages]`` (int32) lists each sequence's pages in order;
  ``seq_lens[batch]`` (int32) counts the tokens in the cache, *including* the ``Tq`` new ones.
  Pages past a sequence's length (and rows past it in its last page) may hold anything, NaN
  included: they are never read into a result.
- With ``Tq > 1`` (chunked / speculative decode), query t sits at position
  ``seq_len - Tq + t`` and attends to cache positions <= that (causal inside the chunk).

Outputs are fp32; ``lse`` is the natural-log sum of exp of the scaled logits (for merging
split-KV partial results).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _gather(cache: torch.Tensor, block_table: torch.Tensor, n: int, b: int) -> torch.Tensor:
    page = cache.shape[1]
    pages = block_table[b, : (n + page - 1) // page].long()
    return cache[pages].reshape(-1, *cache.shape[2:])[:n]


def _causal_keep(n: int, tq: int, device: torch.device) -> torch.Tensor:
    """[Tq, n] True where query t (at position n - Tq + t) may attend key s."""
    q_pos = torch.arange(n - tq, n, device=device)[:, None]
    return torch.arange(n, device=device)[None, :] <= q_pos


def paged_latent_decode_ref(
    q_latent: torch.Tensor,
    q_rope: torch.Tensor,
    cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    latent_offsets: Sequence[int],
    rope_offset: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed latent attention over a paged cache, for ``NB`` latent streams at once.

    q_latent: [B, Tq, NB, Hq, W] absorbed queries (stream b reads columns
    ``latent_offsets[b] : latent_offsets[b] + W``); q_rope: [B, Tq, Hq, R], shared by the
    streams (the RoPE key at columns ``rope_offset : rope_offset + R`` is read once).
    Score = scale * (q_latent . latent + q_rope . k_rope); value = the latent.
    Returns out [B, Tq, NB, Hq, W] and lse [B, Tq, NB, Hq], fp32.
    """
    B, Tq, NB, Hq, W = q_latent.shape
    R = q_rope.shape[-1]
    if len(latent_offsets) != NB:
        raise ValueError(f"latent_offsets has {len(latent_offsets)} entries for {NB} streams")
    out = torch.zeros(B, Tq, NB, Hq, W, dtype=torch.float32, device=q_latent.device)
    lse = torch.full((B, Tq, NB, Hq), float("-inf"), dtype=torch.float32, device=q_latent.device)
    for b in range(B):
        n = int(seq_lens[b])
        if n == 0:
            continue
        rows = _gather(cache, block_table, n, b).float()  # [n, row]
        k_rope = rows[:, rope_offset : rope_offset + R]
        keep = _causal_keep(n, Tq, q_latent.device)  # [Tq, n]
        rope_logits = torch.einsum("thr,sr->ths", q_rope[b].float(), k_rope)
        for j, off in enumerate(latent_offsets):
            lat = rows[:, off : off + W]
            logits = torch.einsum("thw,sw->ths", q_latent[b, :, j].float(), lat) + rope_logits
            logits = (logits * scale).masked_fill(~keep[:, None, :], float("-inf"))
            lse[b, :, j] = torch.logsumexp(logits, dim=-1)
            p = torch.softmax(logits, dim=-1)
            out[b, :, j] = torch.einsum("ths,sw->thw", p, lat)
    return out, lse


def paged_gqa_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA/MQA attention over paged K/V caches.

    q: [B, Tq, Hq, D]; k_cache: [P, page, Hkv, D]; v_cache: [P, page, Hkv, Dv]; query head h
    reads KV head h // (Hq / Hkv). Returns out [B, Tq, Hq, Dv] and lse [B, Tq, Hq], fp32.
    """
    B, Tq, Hq, _ = q.shape
    Hkv, Dv = k_cache.shape[2], v_cache.shape[-1]
    group = Hq // Hkv
    out = torch.zeros(B, Tq, Hq, Dv, dtype=torch.float32, device=q.device)
    lse = torch.full((B, Tq, Hq), float("-inf"), dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(seq_lens[b])
        if n == 0:
            continue
        k = _gather(k_cache, block_table, n, b).float().repeat_interleave(group, dim=1)
        v = _gather(v_cache, block_table, n, b).float().repeat_interleave(group, dim=1)
        keep = _causal_keep(n, Tq, q.device)
        logits = torch.einsum("thd,shd->ths", q[b].float(), k) * scale
        logits = logits.masked_fill(~keep[:, None, :], float("-inf"))
        lse[b] = torch.logsumexp(logits, dim=-1)
        out[b] = torch.einsum("ths,shd->thd", torch.softmax(logits, dim=-1), v)
    return out, lse


def paged_tpa_decode_ref(
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
    """Attention over paged tensor-product factors, never forming per-head keys or values.

    q: [B, Tq, H, d]; a_k, a_v: [P, page, H, R]; b_k, b_v: [P, page, R, d]. Key and value of
    head h at token s are ``k = sum_r a_k[s, h, r] b_k[s, r]`` and ``v = value_scale * sum_r
    a_v[s, h, r] b_v[s, r]``; the logit is ``scale * q_h . k``, computed as ``sum_r a_k[s, h, r]
    (q_h . b_k[s, r])`` and the output as ``sum_r (p_h * a_v[:, h, r]) . b_v[:, r]``.
    Returns out [B, Tq, H, d] and lse [B, Tq, H] (fp32, fp64 for fp64 queries).

    Static shapes, no host synchronisation: every page of the block table is read (entries
    outside the pool are clamped into it) and positions past a sequence's length are zeroed
    before use, so whatever they hold never reaches the result.
    """
    B, T = q.shape[:2]
    f = torch.promote_types(q.dtype, torch.float32)
    idx = block_table.long().clamp(0, a_k.shape[0] - 1)
    ak, bk, av, bv = (x[idx].flatten(1, 2).to(f) for x in (a_k, b_k, a_v, b_v))
    S = ak.shape[1]  # pages * page_size
    pos = torch.arange(S, device=q.device)
    lens = seq_lens.long().to(q.device)
    limit = lens[:, None] - T + torch.arange(T, device=q.device)[None, :]  # [B, T]
    keep = pos[None, None, :] <= limit[:, :, None]  # [B, T, S]
    valid = (pos[None, :] < lens[:, None])[:, :, None, None]  # [B, S, 1, 1]
    ak, bk, av, bv = (torch.where(valid, x, 0.0) for x in (ak, bk, av, bv))
    qb = torch.einsum("bthd,bsrd->bthsr", q.to(f), bk)
    logits = torch.einsum("bthsr,bshr->bths", qb, ak) * scale
    logits = logits.masked_fill(~keep[:, :, None, :], float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # -inf for a row that sees no token
    p = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    pa = torch.einsum("bths,bshr->bthsr", p, av)
    return torch.einsum("bthsr,bsrd->bthd", pa, bv) * value_scale, lse


def latent_train_attention_ref(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    kv: torch.Tensor,
    k_rope: torch.Tensor,
    scale: float,
    out_scale: float,
) -> torch.Tensor:
    """Causal training attention of the latent family (MLA, GLA, MLRA), expanded form.

    q_nope: [B, T, H, D], q_rope: [B, T, H, R]; kv: [B, T, NB, Hkv, D + Dv], each branch's NoPE
    keys (first D columns) and values (query head h reads KV head h // (H / Hkv)); k_rope:
    [B, T, R], the one RoPE key shared by all heads and branches. Branch b's scores are
    ``scale * (q_nope . k_nope[b] + q_rope . k_rope)`` with its own causal softmax; the output
    is ``out_scale * sum_b softmax_b @ v[b]``, [B, T, H, Dv], in q's dtype (computed in fp32,
    or fp64 for fp64 inputs).
    """
    B, T, H, D = q_nope.shape
    group = H // kv.shape[3]
    f = torch.promote_types(q_nope.dtype, torch.float32)
    kv = kv.to(f).repeat_interleave(group, dim=3)
    logits = torch.einsum("bthd,bsnhd->bnhts", q_nope.to(f), kv[..., :D])
    logits = logits + torch.einsum("bthr,bsr->bhts", q_rope.to(f), k_rope.to(f))[:, None]
    keep = torch.ones(T, T, dtype=torch.bool, device=q_nope.device).tril()
    logits = (logits * scale).masked_fill(~keep, float("-inf"))
    o = torch.einsum("bnhts,bsnhd->bthd", torch.softmax(logits, dim=-1), kv[..., D:])
    return (o * out_scale).to(q_nope.dtype)


# ----------------------------------------------------------------------------- decode-step ops
# The small-batch operations of a decode step around the attention kernel. Each reference is
# written with the model's own operations in the model's order, so that a decode step built
# from them equals the module-by-module step (exactly in fp32); the Triton kernels fuse them.
def skinny_linear_ref(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    in_scale: float = 1.0,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``h @ W.T`` for each weight, ``h = rms_norm(x, norm_weight, eps) * in_scale`` (or ``x``).

    ``swiglu``: ``weights`` is (gate, up) and the one output is ``silu(h Wg.T) * (h Wu.T)``.
    ``residual``: added to the (single) output. ``x`` is first cast to the weights' dtype;
    outputs keep its leading dimensions."""
    from mlra.layers import rms_norm  # a building block, not a model

    if swiglu and len(weights) != 2:
        raise ValueError("swiglu takes (gate, up) weights")
    if residual is not None and (swiglu or len(weights) != 1):
        raise ValueError("a residual is added to a single plain output")
    h = x.to(weights[0].dtype)
    if norm_weight is not None:
        h = rms_norm(x, norm_weight, eps)
        if in_scale != 1.0:
            h = h * in_scale
    if swiglu:
        outs = (torch.nn.functional.silu(torch.nn.functional.linear(h, weights[0]))
                * torch.nn.functional.linear(h, weights[1]),)
    else:
        outs = tuple(torch.nn.functional.linear(h, w) for w in weights)
    if residual is not None:
        outs = (residual + outs[0],)
    return outs


def swiglu_mlp_ref(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SwiGLU MLP of a decode step: ``residual + w_down(silu(w_gate h) * w_up h)`` with
    ``h = rms_norm(x, norm_weight, eps)``, the activation in the weights' dtype (as the
    module path stores it); ``residual`` None: no residual."""
    (act,) = skinny_linear_ref(x, [w_gate, w_up], norm_weight=norm_weight, eps=eps, swiglu=True)
    return skinny_linear_ref(act, [w_down], residual=residual)[0]


def rotate_half_ref(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor
                    ) -> torch.Tensor:
    """Rotate-half RoPE of ``x [B, T, heads, r]`` at ``positions [B, T]`` with the
    frequencies ``inv_freq [r / 2]`` (float64; tables in fp32, float64 for float64 ``x``)."""
    from mlra.layers import apply_rotary, rope_tables

    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = rope_tables(positions, inv_freq, dtype)
    return apply_rotary(x, cos[..., None, :], sin[..., None, :])


def latent_decode_prepare_ref(
    q: torch.Tensor,
    c_kv: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    kv_norm: torch.Tensor,
    kv_scale: float,
    w_up: torch.Tensor,
    pool: torch.Tensor,
    slots: torch.Tensor,
    branches: int,
    head_dim: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent family's step between the projections and the attention kernel.

    ``q`` [B, T, H * (d + r)] (per head [nope | rope]); ``c_kv`` [B, T, L * w + r] (the
    latent heads then the RoPE key, unnormed); ``positions`` [B, T] and ``inv_freq`` [r / 2]
    (:func:`mlra.layers.rope_inv_freq`) for RoPE; ``kv_norm`` [L, w];
    ``w_up`` [L, w, Hg * 2 * d] (per query head of a group [W_UK | W_UV]); ``pool``
    [pages, page, L * w + r]; ``slots`` [B * T] rows of the flattened pool.

    Writes each new token's cache row ``[rms_norm(latent head l) * kv_norm[l] * kv_scale ... |
    rope(k_rope)]`` at its slot and returns the absorbed queries ``q_abs`` [B, T, branches,
    groups, Hg, w] and the rotated RoPE queries [B, T, groups, Hg, r], as
    ``LatentAttention.absorb_query`` forms them."""
    from mlra.layers import rms_norm

    B, T = q.shape[:2]
    L, w = kv_norm.shape
    r = 2 * inv_freq.shape[0]
    d = head_dim
    H = q.shape[-1] // (d + r)
    groups = L // branches
    Hg = H // groups
    latent = c_kv[..., : L * w].reshape(B, T, L, w)
    latent = rms_norm(latent, kv_norm, eps) * kv_scale
    k_rope = rotate_half_ref(c_kv[..., L * w:][:, :, None], positions, inv_freq)[:, :, 0]
    row = torch.cat([latent.flatten(-2), k_rope.to(latent.dtype)], dim=-1)
    pool.view(-1, pool.shape[-1]).index_copy_(0, slots, row.flatten(0, 1).to(pool.dtype))
    qh = q.view(B, T, H, d + r)
    q_rope = rotate_half_ref(qh[..., d:], positions, inv_freq)
    w_uk = w_up.view(branches, groups, w, Hg, 2 * d)[..., :d]
    q_abs = torch.einsum("btgid,ngwid->btngiw", qh[..., :d].reshape(B, T, groups, Hg, d),
                         w_uk.to(q.dtype))
    return q_abs, q_rope.reshape(B, T, groups, Hg, r)


def latent_up_output_ref(
    z: torch.Tensor, w_up: torch.Tensor, out_scale: float, head_dim: int
) -> torch.Tensor:
    """Head outputs [B, T, H * d] (``w_up``'s dtype) from the attention result ``z`` [B, T,
    branches, groups, Hg, w]: W_UV per latent head and query head, summed over branches,
    times ``out_scale`` (``LatentAttention.decode_output``)."""
    B, T, nb, G, Hg, w = z.shape
    w_uv = w_up.view(nb, G, w, Hg, 2 * head_dim)[..., head_dim:]
    o = torch.einsum("btngiw,ngwid->btgid", z.to(w_uv.dtype), w_uv) * out_scale
    return o.reshape(B, T, G * Hg * head_dim)


def gqa_decode_prepare_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    head_dim: int,
) -> torch.Tensor:
    """The standard family's step between the projections and the attention kernel: RoPE (at
    ``positions`` with ``inv_freq``) on ``q`` [B, T, H * d] and ``k`` [B, T, Hkv * d], the new
    ``k``/``v`` rows written at ``slots`` of the pools [pages, page, Hkv, d]; returns the
    rotated ``q`` [B, T, H, d]."""
    B, T = q.shape[:2]
    q = rotate_half_ref(q.view(B, T, -1, head_dim), positions, inv_freq)
    k = rotate_half_ref(k.view(B, T, -1, head_dim), positions, inv_freq)
    v = v.view(B, T, -1, head_dim)
    for pool, new in ((k_pool, k), (v_pool, v)):
        pool.view(-1, *pool.shape[2:]).index_copy_(0, slots, new.flatten(0, 1).to(pool.dtype))
    return q


def decode_slots_ref(
    seq_lens: torch.Tensor, block_table: torch.Tensor, new_tokens: int, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[B, T]`` (int64) of the ``T = new_tokens`` new tokens of each sequence
    (``seq_lens`` counts them) and their rows in the flattened paged pools ``[B * T]``."""
    t = torch.arange(new_tokens, device=seq_lens.device)
    positions = seq_lens.long()[:, None] - new_tokens + t[None, :]
    pages = torch.gather(block_table.long(), 1,
                         torch.div(positions, page_size, rounding_mode="floor"))
    return positions, (pages * page_size + positions % page_size).flatten()
