"""Runs the engine's model operations on one rank: :class:`Executor`, and its tensor-parallel
mirror (:class:`BroadcastExecutor` on rank 0, :func:`follow` on the other ranks).

The engine (host-side scheduling, sampling) speaks to the model only through four operations,
each naming requests by their engine id: ``reserve`` pages for a request, ``prefill`` chunks of
tokens, ``decode`` one token per request, ``release`` a request's pages. Under tensor
parallelism rank 0 broadcasts every operation before running it and the other ranks run the same
operations on their own shard and cache, in the same order -- so their caches stay identical in
layout and their collectives meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mlra.cache import PagedKVCache
from mlra.decoding import Decoder


class Executor:
    """A :class:`~mlra.decoding.Decoder` whose sequences are named by request ids."""

    device_inputs = True
    """Whether :meth:`decode_ids` may be called (the engine's overlapped decode)."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.cache: PagedKVCache = decoder.cache
        self._seqs: dict[int, int] = {}  # request id -> cache sequence id

    def _seq(self, rid: int) -> int:
        sid = self._seqs.get(rid)
        if sid is None:
            sid = self._seqs[rid] = self.decoder.add_sequence()
        return sid

    def has(self, rid: int) -> bool:
        return rid in self._seqs

    def reserve(self, rids: Sequence[int], counts: Sequence[int]) -> None:
        """Give each request pages for ``counts[i]`` more tokens (all or nothing)."""
        self.cache.reserve([self._seq(r) for r in rids], counts)

    def prefill(
        self, rids: Sequence[int], chunks: Sequence[Sequence[int]], all_logits: bool = False,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Append ``chunks[i]`` to request ``rids[i]``; logits after each chunk's last token
        ``[batch, vocab]`` (or every position, ``[batch, max_len, vocab]``). ``chunk_size``
        bounds the tokens per sequence of one forward (memory)."""
        sids = [self._seq(r) for r in rids]
        return self.decoder.prefill(sids, chunks, all_logits=all_logits, chunk_size=chunk_size)

    def decode(self, rids: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Append one token per request through the paged decode step; logits ``[batch, vocab]``."""
        sids = [self._seqs[r] for r in rids]
        ids = torch.tensor(list(tokens), dtype=torch.long)[:, None]
        return self.decoder.decode(sids, ids)[:, -1]

    def decode_ids(self, rids: Sequence[int], ids: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` from input ids ``[batch, 1]`` already on the device (sampled there,
        so inside the vocabulary: not checked, which would wait for the device)."""
        sids = [self._seqs[r] for r in rids]
        return self.decoder.decode(sids, ids, validate=False)[:, -1]

    def release(self, rids: Sequence[int]) -> None:
        """Free the pages of requests (unknown ids are ignored)."""
        for r in rids:
            sid = self._seqs.pop(r, None)
            if sid is not None:
                self.decoder.free(sid)

    def length(self, rid: int) -> int:
        return self.cache.length(self._seqs[rid]) if rid in self._seqs else 0

    def pages(self, rid: int) -> int:
        return self.cache.page_count(self._seqs[rid]) if rid in self._seqs else 0


OPS = ("reserve", "prefill", "decode", "release")


class BroadcastExecutor(Executor):
    """Rank 0's executor under tensor parallelism: every operation is first broadcast to the
    other ranks (which run it through :func:`follow`)."""

    device_inputs = False  # the other ranks need the tokens themselves

    def __init__(self, decoder: Decoder, ctx: Any) -> None:
        super().__init__(decoder)
        self.ctx = ctx

    def _send(self, op: str, *args: Any) -> None:
        send(self.ctx, (op, args))

    def reserve(self, rids, counts):  # noqa: D102 - see Executor
        self._send("reserve", list(rids), list(counts))
        return super().reserve(rids, counts)

    def prefill(self, rids, chunks, all_logits=False, chunk_size=None):  # noqa: D102
        self._send("prefill", list(rids), [list(c) for c in chunks], all_logits, chunk_size)
        return super().prefill(rids, chunks, all_logits, chunk_size)

    def decode(self, rids, tokens):  # noqa: D102
        self._send("decode", list(rids), list(tokens))
        return super().decode(rids, tokens)

    def release(self, rids):  # noqa: D102
        self._send("release", list(rids))
        return super().release(rids)

    def heartbeat(self) -> None:
        """Tell the other ranks the server is alive but idle (their receive would time out)."""
        self._send("noop")

    def stop(self) -> None:
        """Tell the other ranks to leave :func:`follow`."""
        self._send("stop")


def send(ctx: Any, message: object) -> None:
    """Broadcast ``message`` from rank 0 to every rank of ``ctx``."""
    import torch.distributed as dist

    dist.broadcast_object_list([message], src=0, group=ctx.group, device=_comm_device(ctx))


def receive(ctx: Any) -> Any:
    """The next message broadcast by rank 0."""
    import torch.distributed as dist

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=ctx.group, device=_comm_device(ctx))
    return box[0]


def _comm_device(ctx: Any) -> torch.device | None:
    return ctx.device if ctx.backend == "nccl" else None


def follow(executor: Executor, ctx: Any) -> int:
    """The loop of a rank other than 0: run every operation rank 0 broadcasts until it says
    stop; returns the number of operations run."""
    count = 0
    while True:
        op, args = receive(ctx)
        if op == "stop":
            return count
        if op in OPS:
            getattr(executor, op)(*args)
            count += 1
