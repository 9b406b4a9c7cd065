"""Paged KV cache: fixed-size pages allocated once, a block table and a length per sequence.

Layout (each family's :class:`~mlra.attention.family.CacheLayout`; the contract of
:mod:`mlra.kernels.reference`):

- latent family (MLA/GLA/MLRA): one pool per layer, ``rows[num_pages, page_size, row]`` with
  row = ``[latent head 0 | ... | latent head L-1 | rope key]``: the latent heads this model
  (or tensor-parallel shard) holds, then the shared RoPE key. Nothing else is cached.
- MHA/MQA/GQA and MFA: ``k`` and ``v`` pools ``[num_pages, page_size, kv_heads, head_dim]``.
- GTA: its compact state, ``kv`` (tied K-NoPE/V part + value-only part per KV head) and the
  shared ``k_rope``; K and V are formed from it at decode time.
- TPA: its factors ``a_k``, ``b_k``, ``a_v``, ``b_v`` (2 * rank * (heads + head_dim) per token,
  e.g. 4.75 d_h at the paper's size instead of 48 d_h of K/V).

Every pool is keyed by the attention's ``kv_state`` names (the latent family packs its two
state tensors into one row). Memory is allocated once, for a number of pages; sequences take
pages as they grow and give them back when freed, while others continue. Pages are handed out
from a stack, so a freed page is the next one reused: outputs never depend on what a page held
before, because no read goes past a sequence's length.

All bookkeeping (free pages, block tables, lengths) lives on the host; the tensors handed to
the decode step (``block_table``, ``seq_lens``) are built from it once per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mlra.attention import CacheLayout
from mlra.config import ModelConfig
from mlra.errors import MlraError

__all__ = ["DEFAULT_PAGE_SIZE", "CacheFullError", "CacheLayout", "PagedKVCache"]

KVState = dict[str, torch.Tensor]

DEFAULT_PAGE_SIZE = 64
"""Tokens per page (FlashMLA's page size; the default for every family)."""


class CacheFullError(MlraError, RuntimeError):
    """The cache has no free page left for a request (raise the token budget)."""


class PagedKVCache:
    """Pools of ``num_pages`` pages of ``page_size`` tokens for every layer of one model.

    ``cfg`` is the config of the model that reads the cache -- for a tensor-parallel shard the
    config of the shard, so the cache holds exactly what that rank needs.
    ``fill_value`` initialises the pools (tests use NaN: no output may depend on unused rows).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_pages: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        fill_value: float = 0.0,
    ) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"num_pages and page_size must be positive, got "
                             f"{num_pages} and {page_size}")
        self.config = cfg
        self.layout = CacheLayout.from_config(cfg)
        self.num_pages, self.page_size = num_pages, page_size
        self.dtype, self.device = dtype, torch.device(device)
        self.pools: list[dict[str, torch.Tensor]] = [
            {
                name: torch.full((num_pages, page_size, *shape), fill_value, dtype=dtype,
                                 device=self.device)
                for name, shape in self.layout.pools
            }
            for _ in range(cfg.n_layers)
        ]
        self._free: list[int] = list(range(num_pages - 1, -1, -1))  # pop() -> lowest first
        self._pages: dict[int, list[int]] = {}
        # host int32 copies of the page lists, kept in step with them (grown as pages are
        # added, dropped when pages go back), so that a block table costs a copy per sequence
        # rather than a conversion of every page id at every decode step
        self._rows: dict[int, torch.Tensor] = {}
        # the last block table built with reuse=True: (its rows, width arg, device table); a
        # row object is replaced whenever its sequence's pages change, so identity is enough
        self._table_memo: tuple[list[torch.Tensor], int | None, torch.Tensor] | None = None
        # the last seq_lens built with reuse=True: (sequence ids, lengths, device tensor)
        self._lens_memo: tuple[list[int], list[int], torch.Tensor] | None = None
        self._lens: dict[int, int] = {}
        self._next_id = 0

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        max_tokens: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        **kwargs,
    ) -> PagedKVCache:
        """A cache for ``model`` (its config, dtype and device) holding ``max_tokens`` tokens
        (rounded up to whole pages; each sequence also rounds its own length up to pages)."""
        param = next(model.parameters())
        kwargs.setdefault("dtype", param.dtype)
        kwargs.setdefault("device", param.device)
        return cls(model.config, max(1, math.ceil(max_tokens / page_size)), page_size, **kwargs)

    # -- sizes ------------------------------------------------------------------------------
    def bytes_per_token(self) -> int:
        """Cache bytes per token over all layers of this model (or shard)."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.layout.elements_per_token * elem * self.config.n_layers

    def bytes_allocated(self) -> int:
        """Bytes held by the pools (allocated once, in the constructor)."""
        return sum(t.numel() * t.element_size() for pools in self.pools for t in pools.values())

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def pages_for(self, n_tokens: int) -> int:
        """Pages needed to hold ``n_tokens`` tokens of one sequence."""
        return math.ceil(n_tokens / self.page_size)

    # -- sequences --------------------------------------------------------------------------
    def add_sequence(self) -> int:
        """Register an empty sequence; returns its id."""
        sid = self._next_id
        self._next_id += 1
        self._pages[sid], self._lens[sid] = [], 0
        return sid

    def length(self, seq_id: int) -> int:
        return self._lens[seq_id]

    def pages(self, seq_id: int) -> list[int]:
        return list(self._pages[seq_id])

    def page_count(self, seq_id: int) -> int:
        """Pages held by ``seq_id`` (without copying its page list)."""
        return len(self._pages[seq_id])

    @property
    def sequences(self) -> list[int]:
        return list(self._lens)

    def reserve(self, seq_ids: Sequence[int], counts: Sequence[int]) -> None:
        """Make room for ``counts[i]`` more tokens in sequence ``seq_ids[i]`` (all or nothing)."""
        need = [
            max(0, self.pages_for(self._lens[s] + n) - len(self._pages[s]))
            for s, n in zip(seq_ids, counts, strict=True)
        ]
        if sum(need) > len(self._free):
            raise CacheFullError(
                f"KV cache full: {sum(need)} more pages of {self.page_size} tokens needed, "
                f"{len(self._free)} of {self.num_pages} free; allocate a larger token budget"
            )
        for s, k in zip(seq_ids, need, strict=True):
            if k:
                new = [self._free.pop() for _ in range(k)]
                self._pages[s].extend(new)
                row = self._rows.get(s)
                if row is not None:
                    self._rows[s] = torch.cat([row, torch.tensor(new, dtype=torch.int32)])

    def extend(self, seq_ids: Sequence[int], counts: Sequence[int]) -> None:
        """Reserve and claim ``counts[i]`` new positions at the end of each sequence."""
        self.reserve(seq_ids, counts)
        for s, n in zip(seq_ids, counts, strict=True):
            self._lens[s] += n

    def append(self, seq_ids: Sequence[int], counts: Sequence[int]) -> torch.Tensor:
        """:meth:`extend`, returning the flat slots (``page * page_size + offset``, int64 on
        the cache device) of the new positions, in sequence order."""
        starts = [self._lens[s] for s in seq_ids]
        self.extend(seq_ids, counts)
        parts = [self._slots(s, a, a + n) for s, a, n in zip(seq_ids, starts, counts, strict=True)]
        slots = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return slots.to(self.device)

    def _slots(self, seq_id: int, start: int, end: int) -> torch.Tensor:
        """Flat slots of positions ``start .. end - 1`` of a sequence (host int64 tensor)."""
        pos = torch.arange(start, end)
        pages = torch.tensor(self._pages[seq_id], dtype=torch.long)
        if len(pos) == 0:
            return pos
        return pages[pos // self.page_size] * self.page_size + pos % self.page_size

    def slot(self, seq_id: int, position: int) -> int:
        """Flat slot of ``position`` of a sequence (the page must be reserved)."""
        page = self._pages[seq_id][position // self.page_size]
        return page * self.page_size + position % self.page_size

    def truncate(self, seq_id: int, length: int, num_pages: int | None = None) -> None:
        """Shorten a sequence to ``length`` tokens and return the pages past ``num_pages``
        (default: the fewest that hold ``length``) to the front of the free list, so that undoing
        the last :meth:`extend` leaves the pool exactly as it was."""
        if not 0 <= length <= self._lens[seq_id]:
            raise ValueError(f"cannot truncate sequence {seq_id} of {self._lens[seq_id]} tokens "
                             f"to {length}")
        keep = -(-length // self.page_size) if num_pages is None else num_pages
        extra = self._pages[seq_id][keep:]
        del self._pages[seq_id][keep:]
        if seq_id in self._rows:
            self._rows[seq_id] = self._rows[seq_id][:keep]
        self._free.extend(reversed(extra))
        self._lens[seq_id] = length

    def free(self, seq_id: int) -> None:
        """Forget a sequence and return its pages (they are reused first)."""
        pages = self._pages.pop(seq_id)
        self._rows.pop(seq_id, None)
        del self._lens[seq_id]
        self._free.extend(reversed(pages))

    def reset(self) -> None:
        """Free every sequence."""
        for sid in list(self._lens):
            self.free(sid)

    # -- tensors for a step -----------------------------------------------------------------
    def block_table(self, seq_ids: Sequence[int], width: int | None = None,
                    reuse: bool = False) -> torch.Tensor:
        """int32 ``[batch, width]``: each sequence's pages in order, padded with page 0.
        ``width`` defaults to the most pages any of the sequences holds. ``reuse``: return the
        table of the last such call when it was for the same sequences holding the same pages
        (a decode step's table changes once a page; the caller must not modify it)."""
        rows = [self._row(s) for s in seq_ids]
        memo = self._table_memo
        if reuse and memo is not None and memo[1] == width and len(memo[0]) == len(rows) and all(
                a is b for a, b in zip(memo[0], rows, strict=True)):
            return memo[2]
        table = self._build_table(seq_ids, rows, width)
        if reuse:
            self._table_memo = (rows, width, table)  # holds the rows: identities stay unique
        return table

    def _build_table(self, seq_ids: Sequence[int], rows: list[torch.Tensor],
                     width: int | None) -> torch.Tensor:
        width = max((len(r) for r in rows), default=0) if width is None else width
        table = torch.zeros(len(rows), max(width, 1), dtype=torch.int32)
        for i, r in enumerate(rows):
            if len(r) > width:
                raise ValueError(f"sequence {seq_ids[i]} holds {len(r)} pages > width {width}")
            table[i, : len(r)] = r
        # a copy from pageable memory is staged before it returns, so non_blocking only skips
        # waiting for the device (a blocking copy would wait for the stream every step)
        return table.to(self.device, non_blocking=True)

    def _row(self, seq_id: int) -> torch.Tensor:
        """The pages of a sequence as a host int32 tensor (built once, then kept in step)."""
        row = self._rows.get(seq_id)
        if row is None:
            row = self._rows[seq_id] = torch.tensor(self._pages[seq_id], dtype=torch.int32)
        return row

    def seq_lens(self, seq_ids: Sequence[int], reuse: bool = False) -> torch.Tensor:
        """int32 ``[batch]`` tokens in the cache per sequence. ``reuse``: when the last such
        call was for the same sequences and each has grown by the same count since (a decode
        step), add that count to its tensor on the device instead of copying from the host."""
        lens = [self._lens[s] for s in seq_ids]
        memo = self._lens_memo
        if reuse and memo is not None and memo[0] == seq_ids and lens:
            grown = lens[0] - memo[1][0]
            if all(a - b == grown for a, b in zip(lens, memo[1], strict=True)):
                out = memo[2] + grown if grown else memo[2]
                self._lens_memo = (memo[0], lens, out)
                return out
        out = torch.tensor(lens, dtype=torch.int32).to(self.device, non_blocking=True)
        if reuse:  # staged: see block_table
            self._lens_memo = (list(seq_ids), lens, out)
        return out

    # -- data -------------------------------------------------------------------------------
    def write(self, layer: int, slots: torch.Tensor, state: KVState) -> None:
        """Store ``state`` (the attention's ``kv_state`` with a flat leading token axis
        ``[N, ...]``) at flat ``slots`` ``[N]`` of ``layer``."""
        for name, data in self.layout.pack(state).items():
            pool = self.pools[layer][name]
            pool.view(-1, *pool.shape[2:]).index_copy_(0, slots, data.to(pool.dtype))

    def token_index(self, seq_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat slots ``[batch, max_len]`` of every cached token of each sequence (0 past its
        length) and the validity mask; compute once, then :meth:`gather` each layer."""
        lens = [self._lens[s] for s in seq_ids]
        S = max(lens, default=0)
        flat = torch.zeros(len(seq_ids), S, dtype=torch.long)
        for i, s in enumerate(seq_ids):
            flat[i, : lens[i]] = self._slots(s, 0, lens[i])
        valid = torch.arange(S)[None, :] < torch.tensor(lens, dtype=torch.long)[:, None]
        return flat.to(self.device), valid.to(self.device)

    def gather(
        self, layer: int, index: tuple[torch.Tensor, torch.Tensor] | Sequence[int]
    ) -> KVState:
        """The cached state of sequences as dense ``[batch, max_len, ...]`` tensors, rows past a
        sequence's length zeroed (never the stale content of a page). ``index`` is the result of
        :meth:`token_index` or a list of sequence ids. For prefill and reference paths; the
        decode step reads the pages directly."""
        if not isinstance(index, tuple):
            index = self.token_index(index)
        flat, valid = index
        out = {}
        for name, pool in self.pools[layer].items():
            rows = pool.view(-1, *pool.shape[2:])[flat]
            keep = valid.view(*valid.shape, *([1] * (rows.dim() - 2)))
            out[name] = rows.masked_fill(~keep, 0)
        return self.layout.unpack(out)
