#!/usr/bin/env python
"""Host time per decode step of :func:`mlra.generate`, outside the model forward.

Builds a tiny model (``--variant``, ``--size``), runs ``generate`` once to build and keep its
decoder (:mod:`mlra.reuse`), then swaps the decoder's step for a stand-in that returns a fixed
logits tensor at once (what a replayed CUDA graph looks like to the host: no model work). Every
remaining microsecond of a ``generate`` call is host work: the engine's scheduling and
bookkeeping, building the step's inputs, sampling, the device-to-host read of the tokens,
stop checks and the streaming callback.

For each batch size, ``--calls`` calls of ``--new-tokens`` greedy tokens; the table gives the
median per decode step, in microseconds, of the whole call and of the phases below (inclusive
times of the named functions, where the code has them; ``other`` is the rest of the call:
``generate``'s loop and callback). The prefill (a real forward) is left out of every column.

- ``engine.step``: :meth:`Engine.step` (everything of a step but ``generate``'s own loop);
- ``decode call``: the executor's decode (building the step's inputs, cache bookkeeping, the
  stand-in step);
- ``launch (overlap)``: the same for an overlapped step (``Executor.decode_ids``, where the
  code has it; with overlap the tokens are read and applied outside ``emit``);
- ``emit``: sampling, the read of the picked tokens, stop checks (:meth:`Engine._emit`).

    PYTHONPATH=src python benchmarks/e2e_decode/host_overhead.py            # CPU
    PYTHONPATH=src python benchmarks/e2e_decode/host_overhead.py --device cuda --out $OUT/host

``--profile`` also prints the top functions by own time (cProfile) of one call per batch.
Writes ``host_overhead.json`` to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import inspect
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mlra import ModelConfig, Transformer
from mlra.generate import generate, kept_decoder
from mlra.serve import engine as engine_mod
from mlra.serve import executor as executor_mod

PHASES: tuple[tuple[str, object, str], ...] = (
    ("engine.step", engine_mod.Engine, "step"),
    ("decode call", executor_mod.Executor, "decode"),
    ("emit", engine_mod.Engine, "_emit"),
    ("launch (overlap)", executor_mod.Executor, "decode_ids"),
    ("prefill", executor_mod.Executor, "prefill"),
)


class FixedStep:
    """A decode step that does no model work: logits ``[batch, T, vocab]`` from a fixed
    buffer (row ``b`` prefers token ``b + 1``, so the greedy tokens never repeat a stop)."""

    def __init__(self, vocab: int, device: torch.device, dtype: torch.dtype, rows: int) -> None:
        self.logits = torch.zeros(rows, 1, vocab, device=device, dtype=dtype)
        self.logits[torch.arange(rows), 0, (torch.arange(rows) + 1) % vocab] = 1.0
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, input_ids: torch.Tensor, block_table: torch.Tensor,
                 seq_lens: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        self.calls += 1
        out = self.logits[: input_ids.shape[0]]
        self.seconds += time.perf_counter() - t0
        return out


class PhaseClock:
    """Inclusive seconds spent in methods patched on their classes (restored by ``close``)."""

    def __init__(self, phases: tuple[tuple[str, object, str], ...]) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[object, str, Callable]] = []
        for label, owner, name in phases:
            fn = owner.__dict__.get(name) if isinstance(owner, type) else None
            if fn is None:
                continue
            self.seconds[label] = 0.0
            setattr(owner, name, self._wrap(label, fn))
            self._undo.append((owner, name, fn))

    def _wrap(self, label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
        return timed

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def close(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: Transformer, batch: int, args, device: torch.device) -> dict:
    """Median per-step host microseconds of ``generate`` at ``batch`` with the fixed step."""
    cfg = model.config
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g).tolist()
    kw = {}
    if args.overlap != "default":
        if "overlap" not in inspect.signature(generate).parameters:
            raise SystemExit("this generate() has no overlap option")
        kw["overlap"] = args.overlap == "on"
    generate(model, prompts, max_new_tokens=args.new_tokens, **kw)  # builds, keeps the decoder
    decoder = kept_decoder(model)
    real = decoder.step
    fixed = FixedStep(cfg.vocab_size, device, next(model.parameters()).dtype, batch)
    decoder.step = fixed
    clock = PhaseClock(PHASES)
    tokens = [0]

    def on_token(_i: int, _t: int) -> None:
        tokens[0] += 1

    rows: list[dict] = []
    try:
        for call in range(args.calls + 1):
            fixed.calls, fixed.seconds = 0, 0.0
            clock.reset()
            _sync(device)
            t0 = time.perf_counter()
            generate(model, prompts, max_new_tokens=args.new_tokens, callback=on_token, **kw)
            _sync(device)
            total = time.perf_counter() - t0
            if call == 0:
                continue  # warm-up
            steps = max(1, fixed.calls)
            prefill = clock.seconds.get("prefill", 0.0)  # the real model: not host time
            row = {"call_us": (total - fixed.seconds - prefill) / steps * 1e6}
            row.update({k: v / steps * 1e6 for k, v in clock.seconds.items() if k != "prefill"})
            if "engine.step" in row:
                row["engine.step"] -= prefill / steps * 1e6
            for k in ("decode call", "launch (overlap)"):
                if row.get(k):
                    row[k] -= fixed.seconds / steps * 1e6
            row["steps"] = fixed.calls
            rows.append(row)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            generate(model, prompts, max_new_tokens=args.new_tokens, callback=on_token, **kw)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.profile)
            print(f"--- batch {batch}: top {args.profile} functions by own time "
                  f"({fixed.calls} steps)")
            print("\n".join(text.getvalue().splitlines()[6:]))
    finally:
        clock.close()
        decoder.step = real
    keys = [k for k in rows[0] if k != "steps"]
    result = {k: statistics.median(r[k] for r in rows) for k in keys}
    result["steps"] = rows[0]["steps"]
    result["batch"] = batch
    named = sum(result[k] for k in ("engine.step",) if k in result)
    result["other"] = result["call_us"] - named
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="mlra_4")
    p.add_argument("--size", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--overlap", choices=("default", "on", "off"), default="default",
                   help="generate's overlap option (default: its own default)")
    p.add_argument("--profile", type=int, default=0, help="print the top N functions")
    p.add_argument("--label", default="", help="a name for this run in the table")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = ModelConfig.preset(args.variant, size=args.size,
                             max_seq_len=max(256, args.prompt_len + args.new_tokens + 1))
    torch.manual_seed(0)
    model = Transformer(cfg).to(device=device, dtype=dtype).eval()
    results = [measure(model, int(b), args, device) for b in args.batches.split(",")]
    cols = ["call_us", "engine.step", "decode call", "launch (overlap)", "emit", "other"]
    label = f" {args.label}" if args.label else ""
    print(f"host microseconds per decode step{label}: {args.variant} {args.size}, "
          f"{device.type}, overlap {args.overlap}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, median of {args.calls} calls (model step replaced by "
          "a fixed-logits stand-in)")
    print("| batch | steps | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for r in results:
        cells = [f"{r[c]:.1f}" if c in r else "" for c in cols]
        print(f"| {r['batch']} | {r['steps']} | " + " | ".join(cells) + " |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "host_overhead.json").write_text(json.dumps(
            {"args": vars(args), "device": str(device), "torch": torch.__version__,
             "results": results}, indent=2))


if __name__ == "__main__":
    main()
