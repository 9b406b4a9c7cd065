#!/usr/bin/env python
"""``mlra.generate`` against its own decode step: time to the first token (cold and warm),
graph reuse between calls, per-token time against the bare step.

For each variant, ``--compile`` setting and batch size, one fresh process (``--no-fresh-process``:
this one, the default off CUDA) builds the model (``--size``, random weights, bf16 on a GPU)
and calls :func:`mlra.generate` three times on the same ``batch`` prompts of ``--prompt-len``
random tokens, greedy, ``--new-tokens`` new tokens each, ``callback`` time-stamping every token
of prompt 0 (the sampled ids reach the host every step, so consecutive stamps are whole steps):

- ``cold`` (the process's first call) and ``warm`` (the second): ``ttft_ms``, call to the first
  token (decoder and cache, prefill, the first sample); ``first_step_ms``, call to the second
  token (plus the first decode step: its eager run, the CUDA-graph capture, Triton JIT and any
  ``torch.compile`` of that shape); ``total_ms``, the whole call;
- ``graphs_captured_second_call`` (0 when the second call replays the graphs of the first) and
  ``same_decoder_second_call`` (the kept decoder, :mod:`mlra.reuse`); ``tokens_identical``:
  the three calls gave the same tokens;
- ``per_token_ms``: median interval between consecutive tokens on the third call, after the
  first ``--skip``: what ``generate`` costs per step, sampling, stop checks, streaming and the
  engine's bookkeeping included;
- ``step_ms``: the bare step at the same batch and context (``prompt_len + new_tokens / 2``):
  the very CUDA graph ``generate`` replays, replayed back to back (CUDA events; off CUDA or
  without graphs, the step called directly);
- ``ratio`` = per_token / step (target <= 1.1);
- ``--overlap``: ``generate``'s ``overlap`` (default: on a GPU), to measure with and without
  the overlapped decode;
- ``new_bucket``: then one call at twice the batch (a batch bucket the process has not seen):
  its TTFT and first step, what a user waits for when the batch size changes.

    PYTHONPATH=src python benchmarks/e2e_decode/bench_generate.py --out "$OUT/generate"

Writes ``bench_generate.json`` and ``bench_generate.md`` to ``--out`` after every
configuration. CPU smoke test: ``--device cpu --size tiny --prompt-len 9 --new-tokens 6``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from mlra import ModelConfig
from mlra.bench.models import random_model
from mlra.bench.timing import median_seconds, synchronize
from mlra.cuda_graphs import GraphedDecodeStep, bucket
from mlra.generate import generate, kept_decoder


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _flags(text: str) -> list[bool]:
    names = {"off": False, "on": True}
    try:
        return [names[t.strip()] for t in text.split(",") if t.strip()]
    except KeyError:
        raise SystemExit(f"--compile takes off, on or off,on; got {text!r}") from None


def _overlap_kw(args) -> dict:
    """``generate``'s ``overlap`` argument from ``--overlap`` (none for its default)."""
    return {} if args.overlap == "default" else {"overlap": args.overlap == "on"}


def _timed_call(model, prompts, new_tokens: int, compile: bool,
                extra: dict | None = None) -> tuple[list, list[float], float]:
    """(tokens, time stamps of prompt 0's tokens relative to the call, whole call seconds);
    ``extra``: more keyword arguments of ``generate``."""
    stamps: list[float] = []

    def on_token(index: int, _token: int) -> None:
        if index == 0:
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    out = generate(model, prompts, max_new_tokens=new_tokens, callback=on_token, compile=compile,
                   **(extra or {}))
    total = time.perf_counter() - t0
    return out, [s - t0 for s in stamps], total


def _call_summary(stamps: list[float], total: float) -> dict:
    return {"ttft_ms": stamps[0] * 1e3,
            "first_step_ms": stamps[1] * 1e3 if len(stamps) > 1 else None,
            "total_ms": total * 1e3}


def _captures(decoder) -> int:
    step = None if decoder is None else decoder.step
    return step.captures if isinstance(step, GraphedDecodeStep) else 0


def _step_path(decoder) -> str:
    step = decoder.step
    inner = step.step if isinstance(step, GraphedDecodeStep) else step
    if getattr(inner, "fused", False):
        path = "fused"
    elif hasattr(getattr(inner, "pre", None), "_torchdynamo_orig_callable"):
        path = "compiled"
    else:
        path = "modules"
    return path + ("+graph" if isinstance(step, GraphedDecodeStep) and not step.disabled else "")


@torch.no_grad()
def bare_step_seconds(model, batch: int, context: int, reps: int) -> float:
    """Median time of the decode step ``generate`` used, for ``batch`` sequences of ``context``
    tokens in the kept decoder's cache: its CUDA graph for that shape replayed back to back
    (captured now if ``generate`` never saw the shape), or the step called directly."""
    decoder = kept_decoder(model)
    cache, step = decoder.cache, decoder.step
    device = cache.device
    sids = [cache.add_sequence() for _ in range(batch)]
    try:
        cache.extend(sids, [context] * batch)
        table, lens = cache.block_table(sids), cache.seq_lens(sids)
        ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
        step(ids, table, lens)  # loads the graph's inputs (or captures the shape)
        fn = lambda: step(ids, table, lens)  # noqa: E731
        if isinstance(step, GraphedDecodeStep) and not step.disabled:
            key = (bucket(batch), 1, bucket(table.shape[1], step.min_width))
            if key in step.graphs:
                fn = step.graphs[key].graph.replay
        for _ in range(3):
            fn()
        synchronize(device)
        return median_seconds(fn, device, reps)
    finally:
        cache.reset()


def triton_cache_entries() -> int:
    """Kernels in Triton's on-disk cache (a cold start compiles those it lacks)."""
    path = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    return sum(1 for _ in path.iterdir()) if path.is_dir() else 0


def run_config(variant: str, size: str, batch: int, compile: bool, args) -> dict:
    """Every number of one (variant, batch, compile) configuration, in this process."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    row: dict = {"variant": variant, "batch": batch, "compile": compile,
                 "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                 "triton_cache_entries_before": triton_cache_entries()}
    t0 = time.perf_counter()
    max_len = max(2048, args.prompt_len + args.new_tokens + 1)
    cfg = ModelConfig.preset(variant, size=size, max_seq_len=max_len, zero_init_output=False)
    model = random_model(cfg, device, dtype)
    synchronize(device)
    row["model_build_s"] = round(time.perf_counter() - t0, 2)
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len), generator=g).tolist()

    first, stamps, total = _timed_call(model, prompts, args.new_tokens, compile, _overlap_kw(args))
    row["cold"] = _call_summary(stamps, total)
    decoder = kept_decoder(model)
    row["step_path"] = _step_path(decoder)
    row["cuda_graphs"] = isinstance(decoder.step, GraphedDecodeStep)
    captured = _captures(decoder)
    row["graphs_captured_first_call"] = captured

    second, stamps, total = _timed_call(model, prompts, args.new_tokens, compile, _overlap_kw(args))
    row["warm"] = _call_summary(stamps, total)
    again = kept_decoder(model)
    row["same_decoder_second_call"] = again is decoder
    row["graphs_captured_second_call"] = (_captures(again) - captured if again is decoder
                                          else _captures(again))

    third, stamps, _ = _timed_call(model, prompts, args.new_tokens, compile, _overlap_kw(args))
    steps = [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)][args.skip:]
    row["tokens_identical"] = first == second == third
    row["per_token_ms"] = statistics.median(steps) * 1e3
    row["per_token_p90_ms"] = (statistics.quantiles(steps, n=10)[-1] * 1e3 if len(steps) > 1
                               else row["per_token_ms"])
    context = args.prompt_len + args.new_tokens // 2
    row["step_context"] = context
    row["step_ms"] = bare_step_seconds(model, batch, context, args.reps) * 1e3
    row["ratio"] = row["per_token_ms"] / row["step_ms"]
    row["host_gap_ms"] = row["per_token_ms"] - row["step_ms"]
    # a batch bucket this process has not seen (twice the batch): what a user waits for when
    # the batch size changes in a warm process (the cache grows: a new decoder, probe, capture)
    g = torch.Generator().manual_seed(batch + 1)
    more = torch.randint(0, cfg.vocab_size, (2 * bucket(batch), args.prompt_len),
                         generator=g).tolist()
    _, stamps, total = _timed_call(model, more, min(args.new_tokens, 8), compile,
                                   _overlap_kw(args))
    row["new_bucket"] = {"batch": len(more), **_call_summary(stamps, total)}
    del model, decoder, again
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _in_subprocess(variant: str, batch: int, compile: bool, args, timeout: float) -> dict:
    """:func:`run_config` in a fresh Python process (a cold start as a user's first call)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--worker", json.dumps(
            {"variant": variant, "batch": batch, "compile": compile}), "--worker-out", str(out),
            "--size", args.size, "--device", args.device, "--prompt-len", str(args.prompt_len),
            "--new-tokens", str(args.new_tokens), "--skip", str(args.skip),
            "--reps", str(args.reps), "--overlap", args.overlap]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=os.environ.copy())
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"worker exited {proc.returncode}: {' | '.join(tail)}"[:400])
        return json.loads(out.read_text())


def _fmt(v, spec: str = ".2f") -> str:
    return "" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    where = "a fresh process" if result["fresh_process"] else "one process"
    lines = [
        f"# `mlra.generate` against its decode step, {result['device']}", "",
        f"torch {result['torch']}, {result['dtype']}, size {result['size']}, random weights; "
        f"prompts of {result['prompt_len']} random tokens, greedy, {result['new_tokens']} new "
        f"tokens; generate overlap {result.get('overlap', 'default')}; each configuration in "
        f"{where}. "
        "TTFT = call to first token (prefill); first step = call to second token (+ the first "
        "decode step: eager run, graph capture, JIT/compile); per token = median interval "
        "between tokens on the third call; step = the graph generate replays, back to back, "
        "at context prompt + new/2.", "",
        f"`{result['command']}`", "",
        "| variant | batch | compile | step path | cold TTFT ms | cold first step ms | "
        "warm TTFT ms | warm first step ms | graphs captured (1st / 2nd call) | per token ms "
        "| step ms | ratio | new bucket: batch, TTFT / first step ms | Triton cache entries "
        "before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        head = f"| {r['variant']} | {r['batch']} | {'on' if r['compile'] else 'off'} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r.get('skipped')} |||||||||||")
            continue
        c, w, nb = r["cold"], r["warm"], r["new_bucket"]
        lines.append(
            f"{head} {r['step_path']} | {c['ttft_ms']:.1f} | {_fmt(c['first_step_ms'], '.1f')} "
            f"| {w['ttft_ms']:.1f} | {_fmt(w['first_step_ms'], '.1f')} | "
            f"{r['graphs_captured_first_call']} / {r['graphs_captured_second_call']} | "
            f"{r['per_token_ms']:.3f} | {r['step_ms']:.3f} | {r['ratio']:.3f} | "
            f"{nb['batch']}: {nb['ttft_ms']:.1f} / {_fmt(nb['first_step_ms'], '.1f')} | "
            f"{r['triton_cache_entries_before']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out/bench_generate")
    p.add_argument("--variants", default="mlra_4,mla,gqa")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--compile", default="off", help="off, on or off,on: generate(compile=...)")
    p.add_argument("--size", default="paper", help="model preset size (paper = 2.9B)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--skip", type=int, default=2, help="intervals left out of the median")
    p.add_argument("--reps", type=int, default=50, help="timed replays of the bare step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overlap", choices=("default", "on", "off"), default="default",
                   help="generate(overlap=...): default (on a GPU), on or off")
    p.add_argument("--fresh-process", action=argparse.BooleanOptionalAction, default=None,
                   help="each configuration in a new process (default: on CUDA)")
    p.add_argument("--budget-s", type=float, default=170.0,
                   help="start no configuration after this many seconds")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.new_tokens < args.skip + 3:
        raise SystemExit(f"--new-tokens must be at least --skip + 3 = {args.skip + 3}")
    if args.worker:
        spec = json.loads(args.worker)
        row = run_config(spec["variant"], args.size, spec["batch"], spec["compile"], args)
        Path(args.worker_out).write_text(json.dumps(row))
        return 0

    t_start = time.time()
    device = torch.device(args.device)
    fresh = device.type == "cuda" if args.fresh_process is None else args.fresh_process
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": name, "torch": torch.__version__, "size": args.size,
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "overlap": args.overlap, "fresh_process": fresh,
        "command": " ".join(["python", *(sys.argv if argv is None else [__file__, *argv])]),
        "results": [],
    }

    def save() -> None:
        (out_dir / "bench_generate.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "bench_generate.md").write_text(format_table(result))

    for variant in (v.strip() for v in args.variants.split(",") if v.strip()):
        for compile in _flags(args.compile):
            for batch in _ints(args.batches):
                left = args.budget_s - (time.time() - t_start)
                row = {"variant": variant, "batch": batch, "compile": compile}
                if left <= 0:
                    row["skipped"] = "time budget"
                else:
                    try:
                        row = (_in_subprocess(variant, batch, compile, args, left + 60) if fresh
                               else run_config(variant, args.size, batch, compile, args))
                    except Exception as exc:
                        traceback.print_exc()
                        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
                result["results"].append(row)
                save()
                if "ratio" in row:
                    print(f"{variant} b={batch} compile={'on' if compile else 'off'} "
                          f"[{row['step_path']}]: cold TTFT {row['cold']['ttft_ms']:.0f} ms, "
                          f"first step {_fmt(row['cold']['first_step_ms'], '.0f')} ms; warm "
                          f"TTFT {row['warm']['ttft_ms']:.1f} ms, first step "
                          f"{_fmt(row['warm']['first_step_ms'], '.1f')} ms; graphs captured "
                          f"2nd call {row['graphs_captured_second_call']}; per token "
                          f"{row['per_token_ms']:.3f} ms vs step {row['step_ms']:.3f} ms = "
                          f"{row['ratio']:.3f}x", flush=True)
    save()
    print(format_table(result))
    print(f"wrote {out_dir / 'bench_generate.json'} in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
