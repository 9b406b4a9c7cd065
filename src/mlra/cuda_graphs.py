"""CUDA-graph replay of the paged decode step: :class:`GraphedDecodeStep`.

At batch sizes of a few sequences a decode step is hundreds of small kernels whose launch cost
from Python dwarfs their run time (eager against replayed steps of the paper-size model are
measured in ``benchmarks/generate`` and ``benchmarks/e2e_decode``). The step is capturable
(static shapes, no host synchronisation, :class:`~mlra.decoding.DecodeStep`), so each shape is
captured once and replayed after that.

Shapes are bucketed so that continuous batching (sequences joining and leaving, block tables
growing page by page) needs few captures: the batch is padded up to a power of two with copies
of its first row (same token, same pages, same length: the copy writes the same cache entry to
the same slot and its outputs are dropped), and the block table is padded with page 0 up to a
power of two of pages (the kernels never read past a sequence's length). One graph per
(batch bucket, tokens per sequence, table-width bucket), each with its own memory pool.

The first call of a shape runs the step eagerly (that is the step's result; it also compiles
and tunes whatever needs it) and then captures it; later calls of that shape copy their inputs
into the graph's static buffers, padded there (:func:`load_padded`: a few copies, no padded
tensors built first), and replay. The graphs live as long as the step object: a decoder kept
between :func:`mlra.generate` calls (:mod:`mlra.reuse`) replays the graphs an earlier call
captured. Under tensor parallelism every rank captures the same shapes in the same order,
collectives included.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= ``n`` and >= ``minimum``."""
    size = max(1, minimum)
    while size < n:
        size *= 2
    return size


def pad_step_inputs(
    input_ids: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    batch: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's inputs padded to ``batch`` rows (copies of row 0) and ``width`` pages (page
    0). A padded row repeats row 0 exactly, so it writes row 0's cache entry again; its logits
    are to be dropped."""
    B, W = block_table.shape
    if batch < B or width < W:
        raise ValueError(f"cannot pad a batch of {B} x {W} pages down to {batch} x {width}")
    rows = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
    rows[:B] = torch.arange(B, device=input_ids.device)
    table = torch.zeros(batch, width, dtype=block_table.dtype, device=block_table.device)
    table[:, :W] = block_table[rows]
    return input_ids[rows], table, seq_lens[rows]


def load_padded(
    static: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    input_ids: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
) -> None:
    """Copy a step's inputs into the larger buffers ``static`` (ids, table, lengths), padded
    exactly as :func:`pad_step_inputs` pads them: rows past the batch repeat row 0, table
    columns past its width are page 0. Every element of the buffers is written (nothing of an
    earlier, larger batch survives), with four to seven copies and no padded tensor built."""
    ids, table, lens = static
    B, W = block_table.shape
    batch, width = table.shape
    if batch < B or width < W:
        raise ValueError(f"cannot pad a batch of {B} x {W} pages down to {batch} x {width}")
    ids[:B].copy_(input_ids)
    lens[:B].copy_(seq_lens)
    table[:B, :W].copy_(block_table)
    if W < width:
        table[:B, W:].zero_()
    if B < batch:
        ids[B:].copy_(ids[:1].expand(batch - B, -1))
        lens[B:].copy_(lens[:1].expand(batch - B))
        table[B:].copy_(table[:1].expand(batch - B, -1))


class _Captured:
    """One captured step: its graph and static input / output buffers."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple[torch.Tensor, ...],
                 output: torch.Tensor) -> None:
        self.graph, self.inputs, self.output = graph, inputs, output

    def replay(self, input_ids: torch.Tensor, block_table: torch.Tensor,
               seq_lens: torch.Tensor) -> torch.Tensor:
        """Replay with these (unpadded) inputs; the static output (all padded rows)."""
        load_padded(self.inputs, input_ids, block_table, seq_lens)  # type: ignore[arg-type]
        self.graph.replay()
        return self.output


class GraphedDecodeStep:
    """``step(input_ids, block_table, seq_lens)`` (a :class:`~mlra.decoding.DecodeStep` or any
    callable with its contract) replayed through CUDA graphs; same inputs and result.

    ``min_width`` is the smallest table-width bucket (pages). ``max_graphs`` bounds the
    captures kept; a shape beyond them runs eagerly. A capture that fails (an operation that
    cannot be captured) is reported once as a warning and every later call runs eagerly.
    ``captures`` counts the graphs captured so far (a reused step captures no new one for a
    shape it has seen).
    """

    def __init__(self, step: Step, *, min_width: int = 16, max_graphs: int = 64) -> None:
        self.step, self.min_width, self.max_graphs = step, min_width, max_graphs
        self.graphs: dict[tuple[int, int, int], _Captured] = {}
        self.disabled: str | None = None
        self.probed = False  # one probe per step: every shape runs the same operations
        self.captures = 0

    def __call__(
        self, input_ids: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor
    ) -> torch.Tensor:
        if not input_ids.is_cuda:
            raise ValueError("CUDA graphs need the model and cache on a CUDA device")
        B, T = input_ids.shape
        if self.disabled is not None:
            return self.step(input_ids, block_table, seq_lens)
        key = (bucket(B), T, bucket(block_table.shape[1], self.min_width))
        captured = self.graphs.get(key)
        if captured is not None:
            return captured.replay(input_ids, block_table, seq_lens)[:B].clone()
        padded = pad_step_inputs(input_ids, block_table, seq_lens, key[0], key[2])
        out = self.step(*padded)  # the real step, eager: also warms up compile / autotuning
        if len(self.graphs) < self.max_graphs and (self.probed or self._capturable(padded)):
            self._capture(key, padded)
        return out[:B]

    def _capturable(self, padded: tuple[torch.Tensor, ...]) -> bool:
        """Run the step once more eagerly with host synchronisation made an error: a step that
        synchronises (the reference kernels read lengths on the host) cannot be captured, and a
        capture that fails half-way leaves the CUDA generator in capture mode, so that every
        later random operation on the device raises. The step is idempotent (it writes the same
        cache entries again), so the probe changes nothing. The first shape is probed only:
        the kernels a step dispatches to depend on the model and cache, not the batch shape."""
        old = torch.cuda.get_sync_debug_mode()
        try:
            torch.cuda.set_sync_debug_mode("error")
            self.step(*padded)
        except RuntimeError as exc:
            self._disable(exc)
            return False
        finally:
            torch.cuda.set_sync_debug_mode(old)
        self.probed = True
        return True

    def _disable(self, exc: Exception) -> None:
        self.disabled = f"{type(exc).__name__}: {exc}".splitlines()[0]
        warnings.warn(f"CUDA graph capture failed, decoding eagerly: {self.disabled}",
                      RuntimeWarning, stacklevel=4)

    def _capture(self, key: tuple[int, int, int], padded: tuple[torch.Tensor, ...]) -> None:
        inputs = tuple(t.clone() for t in padded)
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(inputs[0].device)
            with torch.cuda.graph(graph):
                output = self.step(*inputs)  # recorded, not run: the cache is not written
        except Exception as exc:  # an uncapturable operation: fall back to eager for good
            self._disable(exc)
            return
        self.graphs[key] = _Captured(graph, inputs, output)
        self.captures += 1
