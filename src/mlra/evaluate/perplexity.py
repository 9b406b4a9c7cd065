"""Perplexity over token shards, as the paper evaluates it (official ``eval_ppl.py``).

A shard of n tokens is cut into ``(n - 1) // block_size`` consecutive, non-overlapping windows:
window i reads tokens ``[i*T, (i+1)*T)`` and predicts tokens ``[i*T + 1, (i+1)*T + 1)``; no
context is carried from one window to the next. The loss of a set is the token-weighted mean
next-token cross-entropy (nats) over every predicted token, computed from fp32 logits; the
perplexity is ``exp(loss)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mlra.data.shards import read_shard
from mlra.errors import DataError

LOGIT_CHUNK = 512
"""Positions whose logits are materialised at once (fp32 logits of 2048 x 50304 are 400 MB)."""


@dataclass(frozen=True)
class PerplexityResult:
    """Loss (mean nats per predicted token) and perplexity of one token set."""

    name: str
    path: str
    tokens: int
    windows: int
    block_size: int
    loss: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict:
        return {**asdict(self), "perplexity": self.perplexity}


def num_windows(n_tokens: int, block_size: int, max_tokens: int | None = None) -> int:
    """Whole windows of ``block_size`` predicted tokens in a shard of ``n_tokens`` tokens,
    capped at ``max_tokens`` predicted tokens (rounded down to whole windows)."""
    windows = max(0, (n_tokens - 1) // block_size)
    if max_tokens is not None:
        windows = min(windows, max_tokens // block_size)
    return windows


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _nll_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood of targets ``y`` given inputs ``x`` (fp32
    log-softmax, logits materialised ``LOGIT_CHUNK`` positions at a time)."""
    if hasattr(model, "hidden_states") and hasattr(model, "logits"):
        hidden = model.hidden_states(x)
        total = 0.0
        for s in range(0, x.shape[1], LOGIT_CHUNK):
            logits = model.logits(hidden[:, s:s + LOGIT_CHUNK]).float()
            total += F.cross_entropy(
                logits.flatten(0, 1), y[:, s:s + LOGIT_CHUNK].flatten(), reduction="sum"
            ).item()
        return total
    logits = model(x).logits.float()
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokens: np.ndarray | torch.Tensor,
    block_size: int = 2048,
    batch_size: int = 1,
    max_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str | None = None,
    name: str = "tokens",
    path: str = "",
) -> PerplexityResult:
    """Perplexity of ``model`` on a token stream (non-overlapping windows, see module doc).

    ``autocast_dtype`` (e.g. bfloat16) runs the forward under autocast as the official
    evaluation does; the log-softmax is fp32 either way. Raises :class:`DataError` when the
    stream is shorter than one window."""
    if block_size < 1 or batch_size < 1:
        raise DataError(f"block size and batch size must be positive, got {block_size}, "
                        f"{batch_size}")
    n = len(tokens)
    windows = num_windows(n, block_size, max_tokens)
    if windows == 0:
        need = block_size + 1
        raise DataError(
            f"{path or name}: {n} tokens{'' if max_tokens is None else f' (--tokens {max_tokens})'}"
            f" do not fill one window of --block-size {block_size} ({need} tokens needed); "
            "use a smaller --block-size"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    bar = tqdm(total=windows * block_size, desc=desc or name, unit="tok", unit_scale=True,
               disable=not progress, leave=False)
    try:
        for start in range(0, windows, batch_size):
            rows = range(start, min(start + batch_size, windows))
            buf = np.stack([
                np.asarray(tokens[r * block_size:(r + 1) * block_size + 1], dtype=np.int64)
                for r in rows
            ])
            batch = torch.from_numpy(buf).to(device)
            with _autocast(device, autocast_dtype):
                total += _nll_sum(model, batch[:, :-1], batch[:, 1:])
            bar.update(len(rows) * block_size)
    finally:
        bar.close()
        model.train(was_training)
    count = windows * block_size
    return PerplexityResult(name=name, path=path, tokens=count, windows=windows,
                            block_size=block_size, loss=total / count)


def set_name(path: str | Path) -> str:
    """Display name of a token set: the file stem without the official ``_eval`` suffix."""
    stem = Path(path).stem
    return stem[: -len("_eval")] if stem.endswith("_eval") else stem


def expand_data_paths(
    paths: Sequence[str | Path], include_train: bool = True, notes: list[str] | None = None
) -> list[Path]:
    """Shard paths, with each directory replaced by the ``*.bin`` files in it (sorted). With
    ``include_train=False`` a directory that holds both training (``*train*``) and other
    shards contributes only the others (a note saying so is appended to ``notes``); files
    named explicitly are always kept."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(p.glob("*.bin"))
        if not found:
            raise DataError(f"{p} holds no *.bin token shards")
        train = [f for f in found if "train" in f.name]
        if train and not include_train:
            rest = [f for f in found if "train" not in f.name]
            if not rest:
                raise DataError(f"{p} holds only training shards ({train[0].name}, ...); pass "
                                "--all-shards to score them")
            if notes is not None:
                notes.append(f"{p}: scoring its {len(rest)} validation shard(s), not its "
                             f"{len(train)} training shard(s) (--all-shards scores those too)")
            found = rest
        out.extend(found)
    return out


def evaluate_shards(
    model: torch.nn.Module,
    paths: Sequence[str | Path],
    block_size: int = 2048,
    batch_size: int = 1,
    max_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> list[PerplexityResult]:
    """One :class:`PerplexityResult` per shard file (headers validated, token ids checked
    against the model's vocabulary)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    results = []
    for path in expand_data_paths(paths):
        tokens = read_shard(path, vocab_size=vocab)
        results.append(perplexity(
            model, tokens, block_size=block_size, batch_size=batch_size, max_tokens=max_tokens,
            autocast_dtype=autocast_dtype, progress=progress, name=set_name(path),
            path=str(path),
        ))
    return results


def format_table(results: Sequence[PerplexityResult]) -> str:
    """A Markdown table of loss and perplexity per set, with the mean over sets (the paper's
    "Avg" column is the mean of the per-set perplexities)."""
    lines = ["| set | tokens | loss | perplexity |", "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.tokens:,} | {r.loss:.4f} | {r.perplexity:.3f} |")
    if len(results) > 1:
        mean_loss = sum(r.loss for r in results) / len(results)
        mean_ppl = sum(r.perplexity for r in results) / len(results)
        lines.append(f"| mean of {len(results)} sets | | {mean_loss:.4f} | {mean_ppl:.3f} |")
    return "\n".join(lines)
