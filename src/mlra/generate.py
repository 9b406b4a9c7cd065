"""Batched generation over the paged cache: :func:`generate`.

Prompts of different lengths share one cache without padding (ragged pages: each sequence
holds only its own tokens), so a batch gives exactly the tokens each prompt gives alone.
A thin client of the serving engine (:class:`mlra.serve.Engine`, one decode path): sequences
are admitted while the token budget holds their whole length (continuous batching), stop on
their own conditions and give their pages back at once, while the others continue. The decoder
(cache, decode step, CUDA graphs) is kept for the model between calls (:mod:`mlra.reuse`).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from mlra.cache import DEFAULT_PAGE_SIZE, CacheFullError
from mlra.decoding import GenerationError
from mlra.model import Transformer
from mlra.reuse import borrow, kept_decoder, release_decoder
from mlra.sampling import validate_sampling
from mlra.serve.engine import Engine, SamplingParams
from mlra.serve.executor import Executor

__all__ = ["TokenCallback", "check_prompts", "generate", "kept_decoder", "release_decoder"]

TokenCallback = Callable[[int, int], None]
"""``callback(prompt_index, token)``, called for every generated token as it is produced."""


# ----------------------------------------------------------------------------- validation
def _token(t: object, i: int) -> int:
    """One token id as an int: Python, NumPy or 0-d tensor integers; never bools or floats."""
    if isinstance(t, (bool, np.bool_)) or (
        isinstance(t, (torch.Tensor, np.ndarray)) and t.dtype in (torch.bool, np.bool_)
    ):
        raise GenerationError(f"prompt {i} holds {t!r}, not an integer token id")
    try:
        return operator.index(t)
    except TypeError:
        raise GenerationError(f"prompt {i} holds {t!r}, not an integer token id") from None


def check_prompts(prompts: object, vocab_size: int) -> list[list[int]]:
    """Prompts as lists of ints; :class:`GenerationError` naming the first bad prompt/token.

    Accepts a list of token-id sequences (lists, tuples, 1-D tensors or arrays; ids may be
    NumPy integers) or a 2-D ``[batch, time]`` tensor / NumPy array."""
    if isinstance(prompts, (torch.Tensor, np.ndarray)):
        if prompts.ndim != 2:
            raise GenerationError(
                f"a prompt tensor must be [batch, time], got shape {tuple(prompts.shape)}"
            )
        prompts = prompts.tolist()
    if not isinstance(prompts, Iterable) or isinstance(prompts, (str, bytes)):
        raise GenerationError("prompts must be a list of token-id lists")
    out: list[list[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, numbers.Integral) or (
            isinstance(p, (torch.Tensor, np.ndarray)) and p.ndim == 0
        ):
            raise GenerationError(
                "prompts must be a list of token-id lists; wrap a single prompt as [ids]"
            )
        if isinstance(p, (str, bytes)) or not isinstance(p, Iterable):
            raise GenerationError(f"prompt {i} is {p!r}, not a sequence of token ids")
        seq = p.tolist() if isinstance(p, (torch.Tensor, np.ndarray)) else p
        ids = [_token(t, i) for t in seq]
        if not ids:
            raise GenerationError(f"prompt {i} is empty; give at least one token")
        for t in ids:
            if not 0 <= t < vocab_size:
                raise GenerationError(
                    f"prompt {i} holds token id {t}, outside the vocabulary [0, {vocab_size})"
                )
        out.append(ids)
    return out


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]] | torch.Tensor | np.ndarray,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Iterable[int] | None = None,
    callback: TokenCallback | None = None,
    *,
    max_batch_size: int | None = None,
    cache_tokens: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    prefill_chunk: int | None = None,
    vocab_limit: int | None = None,
    cuda_graphs: bool | None = None,
    compile: bool = False,
    reuse: bool = True,
    overlap: bool | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` tokens after each prompt; returns the new tokens of
    every prompt, in prompt order.

    - ``temperature=0`` is greedy; otherwise sampling with optional ``top_k`` / ``top_p``.
      With ``seed``, prompt ``i`` draws from its own generator seeded ``seed + i``: its tokens
      do not depend on the rest of the batch.
    - A sequence stops after emitting a token of ``stop_tokens`` (kept as its last token).
    - ``callback(i, token)`` streams every token as it is produced.
    - ``max_batch_size`` caps the sequences decoded together; ``cache_tokens`` sets the cache's
      token budget (default: room for every admitted prompt at its full length). Prompts wait
      for pages when the budget is smaller than the whole batch.
    - ``prefill_chunk`` bounds the prompt tokens processed at once.
    - ``vocab_limit`` restricts the choice to ids below it (a tokenizer's vocabulary when the
      model's embedding is padded beyond it).
    - ``cuda_graphs`` replays decode steps through CUDA graphs (default: on when the step runs
      through the Triton kernels: a bf16/fp16 model on a CUDA device); ``compile`` also
      compiles the dense parts of the step (``torch.compile``; on a GPU in max-autotune mode,
      which takes seconds to tens of seconds per batch size the first time) where the step has
      no fused form (:class:`~mlra.decoding.DecodeStep`).
    - ``reuse`` keeps the decoder -- its cache, decode step and CUDA graphs -- for the model
      after the call (:mod:`mlra.reuse`; :func:`release_decoder` frees it), so that the next
      call replays the graphs of the batch shapes it has seen; results are those of a fresh
      decoder. ``reuse=False`` builds one for this call only and frees it on return.
    - ``overlap`` launches each decode step from the previous step's tokens while they are
      still on the device and reads them on the host afterwards, so that the host's work of a
      step (sampling, stop checks, ``callback``, the engine's bookkeeping) runs while the
      device computes the next one (default: on a CUDA device; see
      :class:`~mlra.serve.Engine`). The tokens, and the order of the callbacks, are the same
      either way.

    What a call waits for before its tokens come at the step's pace. The first token is the
    prefill's (one eager forward over the prompts). The first decode step of a batch shape not
    seen before (its batch rounded up to a power of two and its longest sequence's pages to a
    power of two, at least 16) runs eagerly, then is captured in a CUDA graph; on the first call
    of a process that step also compiles the Triton kernels (from the on-disk Triton cache when
    an earlier process compiled them), and with ``compile`` also runs ``torch.compile`` for that
    shape. A later call on the same model with shapes already seen replays: it waits only for
    its prefill. Changing the model's weights, dtype or device (or ``page_size``,
    ``cuda_graphs``, ``compile``), or needing a larger cache than the kept one, starts over as
    a first call. A call running concurrently with another on the same model (threads) uses a
    decoder of its own, as a first call. ``benchmarks/e2e_decode`` measures these waits.

    Raises :class:`GenerationError` for an empty prompt, a token outside the vocabulary, or a
    prompt plus ``max_new_tokens`` beyond the model's context ``max_seq_len``.
    """
    cfg = model.config
    ids = check_prompts(prompts, cfg.vocab_size)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or (
        max_new_tokens < 0
    ):
        raise GenerationError(f"max_new_tokens must be a non-negative integer, "
                              f"got {max_new_tokens!r}")
    try:
        validate_sampling(temperature, top_k, top_p)
    except ValueError as exc:
        raise GenerationError(str(exc)) from exc
    if vocab_limit is not None and not 1 <= vocab_limit <= cfg.vocab_size:
        raise GenerationError(f"vocab_limit must be in [1, {cfg.vocab_size}], got {vocab_limit}")
    if max_batch_size is not None and max_batch_size < 1:
        raise GenerationError(f"max_batch_size must be positive, got {max_batch_size}")
    for i, p in enumerate(ids):
        if len(p) + max_new_tokens > cfg.max_seq_len:
            raise GenerationError(
                f"prompt {i} has {len(p)} tokens; with {max_new_tokens} new tokens that is "
                f"{len(p) + max_new_tokens} > the model's context of {cfg.max_seq_len} tokens"
            )
    outs: list[list[int]] = [[] for _ in ids]
    if max_new_tokens == 0 or not ids:
        return outs
    stops = frozenset(int(t) for t in (stop_tokens or ()))

    # every sequence caches its prompt and all generated tokens but the last
    need = [math.ceil((len(p) + max_new_tokens - 1) / page_size) for p in ids]
    if cache_tokens is None:
        width = len(ids) if max_batch_size is None else max_batch_size
        num_pages = sum(sorted(need, reverse=True)[:width])
    else:
        num_pages = max(1, math.ceil(cache_tokens / page_size))
    if max(need) > num_pages:
        i = need.index(max(need))
        raise CacheFullError(
            f"prompt {i} needs {need[i] * page_size} cache tokens, the budget holds "
            f"{num_pages * page_size}; raise cache_tokens"
        )
    was_training = model.training
    with borrow(model, num_pages, page_size, cuda_graphs=cuda_graphs, compile=compile,
                keep=reuse) as decoder:
        engine = Engine(
            model, max_batch_size=max_batch_size, prefill_chunk=prefill_chunk,
            reserve_full=True, vocab_limit=vocab_limit, executor=Executor(decoder),
            max_pages=num_pages,  # a larger kept cache schedules as one of this size
            overlap=decoder.cache.device.type == "cuda" if overlap is None else overlap,
        )
        index = {
            engine.add_request(p, SamplingParams(
                max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=None if seed is None else seed + i, stop_token_ids=stops,
            )): i
            for i, p in enumerate(ids)
        }
        model.eval()
        try:
            while engine.has_work():
                for out in engine.step():
                    j = index[out.request_id]
                    if out.finish_reason == "error":
                        raise GenerationError(f"prompt {j} failed: {out.error}")
                    for tok in out.tokens:
                        outs[j].append(tok)
                        if callback is not None:
                            callback(j, tok)
        finally:
            model.train(was_training)
    return outs
