"""Prefill and decode over a :class:`~mlra.cache.PagedKVCache`.

Both paths run the model's one outer loop (:meth:`~mlra.model.Transformer.run`) and its one
block forward (:meth:`~mlra.model.Block.forward`) under an attention context that writes the
new tokens' state into the cache and attends over everything cached, so tensor-parallel shard
models (their ``embed_tokens`` / ``logits`` / ``Block.reduce`` hooks) run through them
unchanged:

- :class:`DecodeStep` / :func:`decode_step` -- the paged path (one or a few new tokens per
  sequence), :class:`PagedContext`: the family's decode form (absorbed queries per latent head
  for the latent family, no per-head K or V ever formed; see ``Attention.paged_attend``)
  through the kernels of :mod:`mlra.kernels`. Graph-capturable: static shapes, no host
  synchronisation.
- :func:`dense_forward` -- the prefill / reference path, :class:`DenseCacheContext`: gathers
  each sequence's cached state and attends with an explicit mask, in the expanded (training)
  form or, for the latent family, the absorbed form.

:class:`Decoder` wraps both with the cache bookkeeping.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from mlra import kernels
from mlra.attention import get_family
from mlra.cache import PagedKVCache
from mlra.errors import MlraError
from mlra.fused_step import (
    fused_logits,
    fused_post,
    fused_pre,
    fused_supported,
    prepare_fused,
)
from mlra.layers import Rotary
from mlra.model import AttentionContext, Block, Transformer

FORMS = ("expanded", "absorbed")


class GenerationError(MlraError, ValueError):
    """A generation request is invalid (empty prompt, token out of range, too long, ...)."""


# ----------------------------------------------------------------------------- paged path
class PagedContext(AttentionContext):
    """Attention of ``T`` new tokens per sequence over the paged cache: each layer writes the
    new entries at ``slots`` and reads the pages of ``block_table`` up to ``seq_lens``."""

    decode_form = True

    def __init__(
        self,
        cache: PagedKVCache,
        slots: torch.Tensor,
        block_table: torch.Tensor,
        seq_lens: torch.Tensor,
        pre=None,
        post=None,
    ) -> None:
        super().__init__()
        self.cache, self.slots = cache, slots
        self.block_table, self.seq_lens = block_table, seq_lens
        self.pre = pre or Block.pre
        self.post = post or Block.post

    def prepare(self, model, rope: Rotary, dtype: torch.dtype) -> None:
        """Build the RoPE tables once, outside compiled parts (the one width the family
        rotates: the decoupled RoPE width where it has one, else the head width)."""
        cfg = model.config
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        partial = get_family(cfg.family).rope == "partial"
        rope.tables(cfg.rope_dim if partial else cfg.head_dim, table_dtype)

    def attend(self, block: Block, q, state) -> torch.Tensor:
        cache = self.cache
        pools = cache.pools[block.index]
        for name, data in state.items():  # packed by Block.pre in the decode form
            pool = pools[name]
            pool.view(-1, *pool.shape[2:]).index_copy_(
                0, self.slots, data.flatten(0, 1).to(pool.dtype))
        return block.attn.paged_attend(q, pools, cache.layout, self.block_table, self.seq_lens)


def _no_tables(model, rope: Rotary, dtype: torch.dtype) -> None:
    """A paged context's ``prepare`` when nothing needs RoPE tables."""


class DecodeStep:
    """The paged decode step of ``model`` over ``cache``, as a callable (see :func:`decode_step`).

    Each block runs :meth:`~mlra.model.Block.forward` under a :class:`PagedContext`: the dense
    part before attention (:meth:`~mlra.model.Block.pre`), the cache write and paged attention
    kernel(s), the dense part after it (:meth:`~mlra.model.Block.post`). With ``compile`` (True
    or ``torch.compile`` keyword arguments) the two dense parts are compiled once and reused by
    every layer (the kernels stay outside), which fuses the many small element-wise kernels of
    a decode step; the step remains capturable in a CUDA graph either way. On a GPU,
    ``compile=True`` means ``mode="max-autotune-no-cudagraphs"`` (Inductor then also tunes the
    small-batch matrix products and fuses them with the norms around them; measured in
    ``benchmarks/e2e_decode``); pass a dict to choose another mode.

    ``fused`` (default: wherever the Triton decode kernels run, i.e. a CUDA cache of bf16 or
    fp16) runs each block through the fused decode forms of :mod:`mlra.fused_step` instead
    (a few launches per layer, nothing to compile); families without a fused form, and every
    model when ``fused=False``, take the module-by-module forms (compiled if asked). A fused
    step stores each MLP's down weight column-major (:func:`mlra.fused_step.prepare_fused`:
    same values, in place).
    """

    def __init__(self, model: Transformer, cache: PagedKVCache, compile: bool | dict = False,
                 fused: bool | None = None):
        self.model, self.cache = model, cache
        self.pre, self.post = Block.pre, Block.post
        if fused is None:  # default: on wherever the decode kernels run (CUDA, Triton)
            fused = kernels.triton_decodes(cache.device, cache.dtype)
        self.fused = bool(fused) and all(fused_supported(b) for b in model.layers)
        if self.fused:
            self.post = fused_post
            prepare_fused(model)
        elif compile:
            kwargs = dict(compile) if isinstance(compile, dict) else {}
            if not isinstance(compile, dict) and cache.device.type == "cuda":
                kwargs["mode"] = "max-autotune-no-cudagraphs"
            kwargs.setdefault("dynamic", False)
            self.pre = torch.compile(Block.pre, **kwargs)
            self.post = torch.compile(Block.post, **kwargs)

    def __call__(
        self, input_ids: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor
    ) -> torch.Tensor:
        model, cache = self.model, self.cache
        positions, slots = kernels.decode_slots(seq_lens, block_table, input_ids.shape[1],
                                                cache.page_size)
        ctx = PagedContext(cache, slots, block_table, seq_lens, self.pre, self.post)
        if not self.fused:
            return model.logits(model.run(input_ids, positions, ctx))
        ctx.pre = functools.partial(fused_pre, ctx)
        ctx.prepare = _no_tables  # the fused kernels compute RoPE from the positions
        if getattr(model.logits, "__func__", None) is not Transformer.logits:  # e.g. TP heads
            return model.logits(model.run(input_ids, positions, ctx))
        hidden = model.run(input_ids, positions, ctx, final_norm=False)
        return fused_logits(model, hidden)


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


# ----------------------------------------------------------------------------- dense path
class DenseCacheContext(AttentionContext):
    """Prefill / reference attention: each layer writes the new tokens' state (rows where
    ``valid``) at ``slots``, gathers every cached token of the sequences (``index``) and
    attends with ``mask`` in the expanded or absorbed form."""

    def __init__(self, cache: PagedKVCache, slots, valid, index, mask, form: str) -> None:
        super().__init__(mask)
        self.cache, self.slots, self.valid, self.index = cache, slots, valid, index
        self.absorbed = form == "absorbed"

    def attend(self, block: Block, q, state) -> torch.Tensor:
        i = block.index
        self.cache.write(i, self.slots, {k: v[self.valid] for k, v in state.items()})
        full = self.cache.gather(i, self.index)
        if self.absorbed:
            return block.attn.attend_absorbed(q, full, self.mask)
        return block.attn.attend(q, full, self.mask)


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
    form or (families with an absorbed form: the latent family) the absorbed form."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "absorbed" and not hasattr(model.layers[0].attn, "attend_absorbed"):
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
    ctx = DenseCacheContext(cache, slots, valid, index, mask[:, None], form)
    return model.run(input_ids, positions, ctx)


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
        fused: bool | None = None,
    ) -> None:
        """``compile`` compiles the dense parts of the decode step and ``fused`` picks its fused
        forms (:class:`DecodeStep`);
        ``cuda_graphs`` replays decode steps through CUDA graphs
        (:class:`~mlra.cuda_graphs.GraphedDecodeStep`; the cache must be on a CUDA device)."""
        if cache.config != model.config:
            raise ValueError("the cache was built for a different model config")
        self.model, self.cache = model, cache
        self.step = DecodeStep(model, cache, compile=compile, fused=fused)
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
        if ids.numel() == 0:
            return
        lo, hi = torch.aminmax(ids)
        if int(lo) < 0 or int(hi) >= vocab:
            bad = (ids < 0) | (ids >= vocab)
            raise GenerationError(f"token id {int(ids[bad][0])} is outside the vocabulary "
                                  f"[0, {vocab})")

    @contextmanager
    def _rollback_on_error(self, seq_ids: Sequence[int]) -> Iterator[None]:
        """Undo the cache bookkeeping of a step that raises: each sequence gets back its
        length, and the pages it was given are returned (the free list ends as it was). Rows
        written into those positions are unreachable and overwritten by the next step."""
        cache = self.cache
        sids = list(dict.fromkeys(seq_ids))
        before = {s: (cache.length(s), cache.page_count(s)) for s in sids}
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
    def decode(self, seq_ids: Sequence[int], tokens: torch.Tensor,
               validate: bool = True) -> torch.Tensor:
        """Append ``tokens`` [batch] or [batch, T] (same T for all) through the paged path;
        returns logits [batch, T, vocab]. A token outside the vocabulary is a
        :class:`GenerationError` (``validate=False``: the caller vouches for them, e.g. tokens
        sampled on the device, whose check would wait for it); if the step fails, the
        sequences are left as they were."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() == 1:
            tokens = tokens[:, None]
        B, T = tokens.shape
        if B != len(seq_ids):
            raise ValueError("one row of tokens per sequence id")
        if validate:
            self._check_ids(tokens)  # where they are: host tokens cost no device wait
        tokens = tokens.to(self.cache.device, non_blocking=True)  # staged: no device wait
        with self._rollback_on_error(seq_ids):
            self.cache.extend(seq_ids, [T] * B)
            block_table = self.cache.block_table(seq_ids, reuse=True)
            seq_lens = self.cache.seq_lens(seq_ids, reuse=True)
            return self.step(tokens, block_table, seq_lens)
