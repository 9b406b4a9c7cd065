"""Prefill and decode over a :class:`~mlra.cache.PagedKVCache`.

Two paths, sharing the model's own attention steps (``query``, ``kv_state``, ``attend``,
``absorb_query``, ``up_weights``, ``output``) and its ``embed_tokens`` / ``logits`` / block
``reduce`` hooks, so tensor-parallel shard models run through them unchanged:

- :func:`decode_step` -- the paged path (one or a few new tokens per sequence). Latent family:
  absorbed queries per latent head, attention through :func:`mlra.kernels.paged_latent_decode`
  over the ``[latent heads | rope key]`` rows, W_UV per head, sum over branches times the
  layer's ``out_scale``; no per-head K or V is ever formed. Other families: through
  :func:`mlra.kernels.paged_gqa_decode` -- directly on the K/V pools (MHA/MQA/GQA/MFA), or on
  K/V formed from the cached compact state of the sequences' pages (GTA, TPA). The step is
  graph-capturable: static shapes, no host synchronisation.
- :func:`dense_forward` -- the prefill / reference path: writes the new tokens' state, gathers
  each sequence's cached state and attends with an explicit mask, in the expanded (training)
  form or, for the latent family, the absorbed form.

:class:`Decoder` wraps both with the cache bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from mlra import kernels
from mlra.attention import Attention, LatentAttention
from mlra.cache import CacheLayout, PagedKVCache
from mlra.errors import MlraError
from mlra.layers import Rotary
from mlra.model import Transformer

FORMS = ("expanded", "absorbed")


class GenerationError(MlraError, ValueError):
    """A generation request is invalid (empty prompt, token out of range, too long, ...)."""


# ----------------------------------------------------------------------------- paged path
class DecodeStep:
    """The paged decode step of ``model`` over ``cache``, as a callable (see :func:`decode_step`).

    Per layer it runs three parts: the dense part before attention (norm, projections, absorbed
    queries; :func:`layer_pre`), the cache write and paged attention kernel(s)
    (:func:`paged_attention`), and the dense part after it (W_UV, output projection, residuals,
    MLP; :func:`layer_post`). With ``compile`` (True or ``torch.compile`` keyword arguments) the
    two dense parts are compiled once and reused by every layer (the kernels stay outside), which
    fuses the many small element-wise kernels of a decode step; the step remains capturable in a
    CUDA graph either way. On a GPU, ``compile=True`` means ``mode="max-autotune-no-cudagraphs"``:
    Inductor then also tunes the small-batch matrix products and fuses them with the norms around
    them (paper-size MLRA-4, batch 1, H200: 2.76 ms per step against 3.16 ms with the default
    mode; ``benchmarks/e2e_decode/results/profile``); pass a dict to choose another mode.
    """

    def __init__(self, model: Transformer, cache: PagedKVCache, compile: bool | dict = False):
        self.model, self.cache = model, cache
        self.pre, self.post = layer_pre, layer_post
        if compile:
            kwargs = dict(compile) if isinstance(compile, dict) else {}
            if not isinstance(compile, dict) and cache.device.type == "cuda":
                kwargs["mode"] = "max-autotune-no-cudagraphs"
            kwargs.setdefault("dynamic", False)
            self.pre = torch.compile(layer_pre, **kwargs)
            self.post = torch.compile(layer_post, **kwargs)

    def __call__(
        self, input_ids: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor
    ) -> torch.Tensor:
        model, cache = self.model, self.cache
        cfg = model.config
        B, T = input_ids.shape
        device = input_ids.device
        positions = seq_lens.long()[:, None] - T + torch.arange(T, device=device)[None, :]
        page = cache.page_size
        pages = torch.gather(block_table.long(), 1,
                             torch.div(positions, page, rounding_mode="floor"))
        slots = (pages * page + positions % page).flatten()
        rope = Rotary(positions, cfg.rope_base)
        x = model.embed_tokens(input_ids)
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        for width in {cfg.head_dim, cfg.rope_dim}:  # tables built once, outside compiled parts
            rope.tables(width, table_dtype)
        for i, block in enumerate(model.layers):
            h, q, packed = self.pre(block, x, rope, cache.layout)
            o = paged_attention(block.attn, q, packed, cache, i, slots, block_table, seq_lens)
            x = self.post(block, x, h, o)
        return model.logits(model.norm(x))


def decode_step(
    model: Transformer,
    cache: PagedKVCache,
    input_ids: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Logits ``[batch, T, vocab]`` of ``T`` new tokens per sequence, read from and written to
    the paged cache.

    ``input_ids`` [batch, T]; ``block_table`` int32 [batch, pages] with the pages holding every
    position up to ``seq_lens`` already assigned; ``seq_lens`` int32 [batch] counts the cached
    tokens *including* the ``T`` new ones (which sit at positions ``seq_lens - T ... - 1``).
    Static shapes, no host synchronisation: capturable in a CUDA graph.
    """
    return DecodeStep(model, cache)(input_ids, block_table, seq_lens)


def layer_pre(
    block: torch.nn.Module, x: torch.Tensor, rope: Rotary, layout: CacheLayout
) -> tuple[torch.Tensor, object, dict[str, torch.Tensor]]:
    """Normed input ``h``, the queries (absorbed ``(q_abs, q_rope)`` for the latent family) and
    the new tokens' cache entries (packed as the cache stores them, ``[B, T, ...]``)."""
    h = block.attn_norm(x)
    attn = block.attn
    q = attn.query(h, rope)
    if isinstance(attn, LatentAttention):
        q = attn.absorb_query(q)  # [B,T,NB,G,Hg,w], [B,T,G,Hg,r]
    return h, q, layout.pack(attn.kv_state(h, rope))


def paged_attention(
    attn: Attention,
    q: object,
    packed: dict[str, torch.Tensor],
    cache: PagedKVCache,
    layer: int,
    slots: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
) -> torch.Tensor:
    """Write the new entries at ``slots`` and attend through the :mod:`mlra.kernels` dispatch.

    Latent family: returns the per-latent-head attention ``z`` [B, T, NB, G, Hg, w] (fp32), one
    kernel call per query-head group g over the ``branches`` latent heads (b, g) it reads (all
    of them for MLA/MLRA-B, sharing the RoPE key; one per call for GLA-G). Other families:
    the head outputs [B, T, H, d_v] (fp32); GTA and TPA cache a compact state, and their K/V
    are formed here for the pages in the block table only (static shapes: ``batch * pages``
    pages, re-indexed by a dense table).
    """
    pools = cache.pools[layer]
    for name, data in packed.items():
        pool = pools[name]
        pool.view(-1, *pool.shape[2:]).index_copy_(0, slots, data.flatten(0, 1).to(pool.dtype))
    scale = attn.cfg.softmax_scale
    if isinstance(attn, LatentAttention):
        q_abs, q_rope = q
        G, NB, layout = attn.groups, attn.branches, cache.layout
        zs = []
        for g in range(G):
            offsets = [layout.latent_offsets[b * G + g] for b in range(NB)]
            z, _ = kernels.paged_latent_decode(
                q_abs[:, :, :, g].contiguous(), q_rope[:, :, g].contiguous(), pools["rows"],
                block_table, seq_lens, offsets, layout.rope_offset, scale,
            )  # [B, T, NB, Hg, w]
            zs.append(z)
        return torch.stack(zs, dim=3)
    if cache.layout.direct_kv:
        k, v, table = pools["k"], pools["v"], block_table
    else:
        B, W = block_table.shape
        idx = block_table.long()
        paged = {name: pool[idx].flatten(0, 1) for name, pool in pools.items()}
        k, v = attn.expand(paged)  # [B * W, page, kv_heads, d]
        table = torch.arange(B * W, dtype=torch.int32, device=idx.device).view(B, W)
    out, _ = kernels.paged_gqa_decode(q, k, v, table, seq_lens, scale)
    return out


def layer_post(
    block: torch.nn.Module, x: torch.Tensor, h: torch.Tensor, o: torch.Tensor
) -> torch.Tensor:
    """From the attention result to the block output: W_UV per head, sum over branches times
    ``out_scale`` (latent family), output projection, ``reduce``, residuals and the MLP -- as
    ``Block.forward``."""
    attn = block.attn
    B, T, _ = x.shape
    if isinstance(attn, LatentAttention):
        _, w_uv = attn.up_weights()  # [NB, G, w, Hg, dh]
        o = torch.einsum("btcgiw,cgwid->btgid", o.to(w_uv.dtype), w_uv) * attn.out_scale
    o = o.reshape(B, T, attn.cfg.attn_out_dim).to(h.dtype)
    x = x + block.reduce(attn.output(o, h))
    return x + block.reduce(block.mlp(block.mlp_norm(x)))


# ----------------------------------------------------------------------------- dense path
def dense_forward(
    model: Transformer,
    cache: PagedKVCache,
    seq_ids: Sequence[int],
    input_ids: torch.Tensor,
    counts: Sequence[int],
    form: str = "expanded",
) -> torch.Tensor:
    """Append ``counts[b]`` tokens (``input_ids[b, :counts[b]]``, right-padded) to each sequence
    and return the final hidden states ``[batch, T, d_model]`` (rows past ``counts[b]`` are
    padding). Attention runs over the gathered cache with an explicit mask, in the expanded
    form or (latent family only) the absorbed form."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "absorbed" and model.config.attention != "latent":
        raise ValueError("the absorbed form exists for the latent family (MLA/GLA/MLRA) only")
    B, T = input_ids.shape
    if len(seq_ids) != B or len(counts) != B:
        raise ValueError("seq_ids, counts and input_ids must have the same batch size")
    if any(not 1 <= n <= T for n in counts):
        raise ValueError(f"every count must be in [1, {T}], got {list(counts)}")
    device = input_ids.device
    starts = torch.tensor([cache.length(s) for s in seq_ids], dtype=torch.long, device=device)
    slots = cache.append(seq_ids, counts)
    n_new = torch.tensor(list(counts), dtype=torch.long, device=device)
    t = torch.arange(T, device=device)
    positions = starts[:, None] + t[None, :]
    valid = t[None, :] < n_new[:, None]
    index = cache.token_index(seq_ids)
    key_pos = torch.arange(index[0].shape[1], device=device)
    # query (b, t) sees cached keys s <= its position; padded queries see a non-empty prefix
    mask = (key_pos[None, None, :] <= positions[:, :, None]) & index[1][:, None, :]
    mask = mask[:, None]  # [B, 1, T, S]
    rope = Rotary(positions, model.config.rope_base)
    x = model.embed_tokens(input_ids)
    for i, block in enumerate(model.layers):
        h = block.attn_norm(x)
        attn = block.attn
        state = attn.kv_state(h, rope)
        cache.write(i, slots, {k: v[valid] for k, v in state.items()})
        full = cache.gather(i, index)
        q = attn.query(h, rope)
        if form == "absorbed":
            o = attn.attend_absorbed(q, full, mask)
        else:
            o = attn.attend(q, full, mask)
        x = x + block.reduce(attn.output(o, h))
        x = x + block.reduce(block.mlp(block.mlp_norm(x)))
    return model.norm(x)


# ----------------------------------------------------------------------------- driver
class Decoder:
    """A model and its paged cache: sequences, prefill and decode.

    >>> cache = PagedKVCache.for_model(model, max_tokens=4096)
    >>> dec = Decoder(model, cache)
    >>> sid = dec.add_sequence()
    >>> logits = dec.prefill([sid], [[1, 2, 3]])      # [1, vocab], last prompt token
    >>> logits = dec.decode([sid], torch.tensor([[7]]))  # [1, 1, vocab]
    """

    def __init__(
        self,
        model: Transformer,
        cache: PagedKVCache,
        compile: bool | dict = False,
        cuda_graphs: bool = False,
    ) -> None:
        """``compile`` compiles the dense parts of the decode step (:class:`DecodeStep`);
        ``cuda_graphs`` replays decode steps through CUDA graphs
        (:class:`~mlra.cuda_graphs.GraphedDecodeStep`; the cache must be on a CUDA device)."""
        if cache.config != model.config:
            raise ValueError("the cache was built for a different model config")
        self.model, self.cache = model, cache
        self.step = DecodeStep(model, cache, compile=compile)
        if cuda_graphs:
            if cache.device.type != "cuda":
                raise ValueError(f"cuda_graphs needs the model and cache on a CUDA device, "
                                 f"not {cache.device}")
            from mlra.cuda_graphs import GraphedDecodeStep

            self.step = GraphedDecodeStep(self.step)

    def add_sequence(self) -> int:
        return self.cache.add_sequence()

    def free(self, seq_id: int) -> None:
        self.cache.free(seq_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = self.model.config.vocab_size
        bad = (ids < 0) | (ids >= vocab)
        if bool(bad.any()):
            raise GenerationError(f"token id {int(ids[bad][0])} is outside the vocabulary "
                                  f"[0, {vocab})")

    @contextmanager
    def _rollback_on_error(self, seq_ids: Sequence[int]) -> Iterator[None]:
        """Undo the cache bookkeeping of a step that raises: each sequence gets back its
        length, and the pages it was given are returned (the free list ends as it was). Rows
        written into those positions are unreachable and overwritten by the next step."""
        cache = self.cache
        sids = list(dict.fromkeys(seq_ids))
        before = {s: (cache.length(s), len(cache.pages(s))) for s in sids}
        try:
            yield
        except BaseException:
            for s in reversed(sids):  # reverse of the order reserve() took the pages in
                cache.truncate(s, *before[s])
            raise

    @torch.no_grad()
    def prefill(
        self,
        seq_ids: Sequence[int],
        prompts: Sequence[Sequence[int]] | Sequence[torch.Tensor],
        *,
        form: str = "expanded",
        all_logits: bool = False,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Append each prompt to its sequence (prompts of different lengths; sequences may
        already hold tokens). Returns the logits after each prompt's last token ``[batch,
        vocab]``, or with ``all_logits`` every prompt position ``[batch, max_len, vocab]`` (rows
        past a prompt's length are padding). ``chunk_size`` bounds the tokens per sequence
        processed at once (memory of long prompts)."""
        lists = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
        if len(lists) != len(seq_ids):
            raise ValueError("one prompt per sequence id")
        if any(len(p) == 0 for p in lists):
            raise ValueError("prompts must not be empty")
        for p in lists:
            self._check_ids(p)
        with self._rollback_on_error(seq_ids):
            return self._prefill(seq_ids, lists, form, all_logits, chunk_size)

    def _prefill(
        self,
        seq_ids: Sequence[int],
        lists: list[torch.Tensor],
        form: str,
        all_logits: bool,
        chunk_size: int | None,
    ) -> torch.Tensor:
        lens = [len(p) for p in lists]
        chunk = chunk_size or max(lens)
        vocab_out: list[torch.Tensor] = []
        last = [None] * len(lists)
        for c0 in range(0, max(lens), chunk):
            rows = [b for b, n in enumerate(lens) if n > c0]
            counts = [min(chunk, lens[b] - c0) for b in rows]
            ids = torch.zeros(len(rows), max(counts), dtype=torch.long)
            for r, b in enumerate(rows):
                ids[r, : counts[r]] = lists[b][c0 : c0 + counts[r]]
            hidden = dense_forward(self.model, self.cache, [seq_ids[b] for b in rows],
                                   ids.to(self.device), counts, form)
            if all_logits:
                full = torch.zeros(len(lists), hidden.shape[1], self.model.config.vocab_size,
                                   device=self.device, dtype=hidden.dtype)
                full[rows] = self.model.logits(hidden).to(full.dtype)
                vocab_out.append(full)
            for r, b in enumerate(rows):
                if c0 + counts[r] == lens[b]:
                    last[b] = hidden[r, counts[r] - 1]
        if all_logits:
            return torch.cat(vocab_out, dim=1)[:, : max(lens)]
        return self.model.logits(torch.stack(last)[:, None])[:, 0]

    @torch.no_grad()
    def decode(self, seq_ids: Sequence[int], tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` [batch] or [batch, T] (same T for all) through the paged path;
        returns logits [batch, T, vocab]. A token outside the vocabulary is a
        :class:`GenerationError`; if the step fails, the sequences are left as they were."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        if tokens.dim() == 1:
            tokens = tokens[:, None]
        B, T = tokens.shape
        if B != len(seq_ids):
            raise ValueError("one row of tokens per sequence id")
        self._check_ids(tokens)
        with self._rollback_on_error(seq_ids):
            self.cache.extend(seq_ids, [T] * B)
            block_table = self.cache.block_table(seq_ids)
            seq_lens = self.cache.seq_lens(seq_ids)
            return self.step(tokens, block_table, seq_lens)
