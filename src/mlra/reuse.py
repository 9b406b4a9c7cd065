"""Decoders kept between :func:`mlra.generate` calls, one per model: :func:`borrow`,
:func:`kept_decoder`, :func:`release_decoder`.

A decoder (:class:`~mlra.decoding.Decoder`) is a paged cache and a decode step; on a GPU the
step holds its CUDA graphs (one per batch and block-table bucket, :mod:`mlra.cuda_graphs`) and
whatever it compiled. Keeping it means that a second call with the same batch shape replays
the graphs the first call captured instead of capturing them again.

- Kept per model, weakly: the decoder reaches the model through a weak proxy, so dropping the
  model frees it, its cache and its graphs (nothing is attached to the model itself: copying or
  pickling the model copies none of it).
- Used again only while it fits the call: the same page size, graph and compile settings, the
  same inference mode (a cache made under ``torch.inference_mode`` cannot be written outside
  it), a cache of at least the pages the call needs, and the model's parameters and buffers
  unchanged since the last call (the same tensors -- address, dtype, device, shape -- and no
  in-place update: their version counters). Otherwise it is dropped, its memory first, and a new one
  built; one that grows keeps the larger of the two sizes.
- A call holds it alone: a concurrent call on the same model (another thread) builds a decoder
  of its own for that call, as every call did before decoders were kept.
- Between calls its cache holds no sequence (all freed when the call returns or raises; a call
  that raises also drops the decoder). Its pages still hold earlier rows, which no step reads:
  reads stop at each sequence's length, and every position below it is written by the call.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from mlra.decoding import Decoder
from mlra.serve.engine import make_decoder, resolve_cuda_graphs

__all__ = ["borrow", "fingerprint", "kept_decoder", "release_decoder"]


@dataclass
class _Kept:
    decoder: Decoder
    settings: tuple
    fingerprint: tuple
    lock: threading.Lock = field(default_factory=threading.Lock)


_kept: weakref.WeakKeyDictionary[torch.nn.Module, _Kept] = weakref.WeakKeyDictionary()
_registry = threading.Lock()


def fingerprint(model: torch.nn.Module) -> tuple:
    """What a kept decoder depends on: the config, and for every parameter and buffer its
    address, dtype, device, shape and version counter (bumped by in-place updates)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return (model.config, tuple(
        (t.data_ptr(), t.dtype, t.device, tuple(t.shape), _version(t)) for t in tensors))


def _version(t: torch.Tensor) -> int:
    """The version counter; -1 for an inference tensor (it has none; graphs read the tensor's
    memory, so an in-place update still reaches them)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def kept_decoder(model: torch.nn.Module) -> Decoder | None:
    """The decoder kept for ``model`` (None when there is none); for inspection only -- not
    to be used while a :func:`mlra.generate` call on the model runs."""
    with _registry:
        entry = _kept.get(model)
    return None if entry is None else entry.decoder


def release_decoder(model: torch.nn.Module | None = None) -> None:
    """Drop the decoder kept for ``model`` (every model's when None): its cache, graphs and
    compiled step are freed once no call uses them; the next call builds a new one."""
    with _registry:
        if model is None:
            _kept.clear()
        else:
            _kept.pop(model, None)


def _settings(page_size: int, cuda_graphs: bool, compile: bool | dict) -> tuple:
    return (page_size, cuda_graphs, dict(compile) if isinstance(compile, dict) else bool(compile),
            torch.is_inference_mode_enabled())


def _checkout(model: torch.nn.Module, num_pages: int, page_size: int, cuda_graphs: bool,
              compile: bool | dict) -> _Kept | None:
    """The kept decoder, fitted to the call and locked for it (built when missing or unfit);
    None while another call holds it."""
    settings = _settings(page_size, cuda_graphs, compile)
    with _registry:
        entry = _kept.get(model)
        if entry is not None:
            if not entry.lock.acquire(blocking=False):
                return None
            same = entry.settings == settings and entry.fingerprint == fingerprint(model)
            if same and entry.decoder.cache.num_pages >= num_pages:
                return entry
            if same:  # grows: a size between the two would be outgrown again
                num_pages = max(num_pages, entry.decoder.cache.num_pages)
            del _kept[model]  # freed before the new cache is allocated
            entry.lock.release()
            entry = None
        decoder = make_decoder(weakref.proxy(model), num_pages * page_size, page_size,
                               cuda_graphs=cuda_graphs, compile=compile)
        entry = _Kept(decoder, settings, fingerprint(model))
        entry.lock.acquire()
        _kept[model] = entry
        return entry


@contextmanager
def borrow(
    model: torch.nn.Module,
    num_pages: int,
    page_size: int,
    *,
    cuda_graphs: bool | None = None,
    compile: bool | dict = False,
    keep: bool = True,
) -> Iterator[Decoder]:
    """A decoder for ``model`` with a cache of at least ``num_pages`` pages of ``page_size``
    tokens, holding no sequence, for the duration of the ``with`` block: the one kept from an
    earlier call when it fits, else a new one (kept afterwards when ``keep``). On leaving, every
    sequence is freed; a block that raises drops the decoder (the next call builds a new one).

    ``cuda_graphs`` None means: where the step runs through the Triton kernels (see
    :func:`~mlra.serve.engine.make_decoder`)."""
    graphs = resolve_cuda_graphs(model, cuda_graphs)
    entry = _checkout(model, num_pages, page_size, graphs, compile) if keep else None
    if entry is None:  # not kept: a decoder of this call's own, freed with it
        yield make_decoder(model, num_pages * page_size, page_size, cuda_graphs=graphs,
                           compile=compile)
        return
    ok = False
    try:
        yield entry.decoder
        ok = True
    finally:
        entry.decoder.cache.reset()
        with _registry:
            if not ok and _kept.get(model) is entry:
                del _kept[model]
            else:  # what the next call compares with: the model as this call leaves it
                entry.fingerprint = fingerprint(model)
            entry.lock.release()
