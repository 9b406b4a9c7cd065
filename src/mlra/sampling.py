"""Next-token selection: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def validate_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` for parameters outside their domain."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """``logits`` [batch, vocab] with tokens outside the top-k and outside the smallest set whose
    probability reaches ``top_p`` set to -inf (the most likely token is always kept)."""
    logits = logits.float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """Next token per row of ``logits`` [batch, vocab] -> int64 [batch].

    ``temperature == 0`` is greedy (argmax). Otherwise row ``i`` is drawn from
    softmax(filtered logits / temperature) with ``generators[i]`` (None: the global RNG), so a
    sequence's draws do not depend on the other rows of the batch. ``vocab_limit`` restricts
    the choice to ids below it without copying ``logits`` (greedy reads a slice; sampling
    masks its own scaled copy, drawing over the full width so the random stream is the same
    as for logits masked beforehand).
    """
    if temperature == 0:
        return (logits if vocab_limit is None else logits[:, :vocab_limit]).argmax(dim=-1)
    scaled = logits.float() / temperature  # a new tensor: masked in place below
    if vocab_limit is not None:
        scaled[:, vocab_limit:] = float("-inf")
    probs = torch.softmax(filter_logits(scaled, top_k, top_p), dim=-1)
    gens = list(generators) if generators is not None else [None] * probs.shape[0]
    if len(gens) != probs.shape[0]:
        raise ValueError(f"{len(gens)} generators for {probs.shape[0]} rows")
    return torch.cat([
        torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)
    ])
