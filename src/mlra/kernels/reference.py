"""PyTorch references of the paged decode kernels (the contract the Triton kernels implement).

Paged cache layout (shared by the cache, the decoders and the kernels):

- Latent family (MLA/GLA/MLRA): one pool per layer, ``cache[num_pages, page_size, row]`` whose
  row is ``[latent head 0 (w) | latent head 1 | ... | rope key (r)]`` -- the latent heads this
  device holds, then the shared RoPE key. MLA's row is [512 | 64] as FlashMLA's.
- Standard family: ``k_cache[num_pages, page_size, kv_heads, d]``, ``v_cache[..., d_v]``.
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
