#!/usr/bin/env python
"""End-to-end decode throughput against the memory-bandwidth floor (one GPU).

For the paper-size MLRA-4, MLA and GQA (random weights, bf16), batch 1 and 32, contexts 4K to
128K: one decode step of the whole model (embedding, 24 layers with paged-cache attention
through ``mlra.kernels``, output head) captured in a CUDA graph and replayed. Reported per
configuration:

- ``floor_ms``: (weight bytes + cache bytes read per step) / measured copy bandwidth, the
  bandwidth being measured here (a large device-to-device copy, read + write bytes / time);
- ``step_ms``: median CUDA-graph replay time of one decode step (``eager_ms``: without graph);
- ``ratio`` = step / floor (target <= 1.4 at batch 1) and ``tokens_per_s`` = batch / step.

Batch-32 configurations whose cache does not fit in free device memory are recorded as
skipped. Results go to ``OUT/e2e_decode.json`` (written after every configuration) and a
Markdown table ``OUT/e2e_decode.md``.

    python benchmarks/e2e_decode/bench_decode.py --out "${OUT:-benchmarks/e2e_decode/results}"

Local smoke test (CPU, tiny models, no graphs): ``--device cpu --size tiny --contexts 64,128``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from mlra import ModelConfig, Transformer, kernels
from mlra.bench.models import random_model
from mlra.bench.paged import random_paged_cache
from mlra.bench.timing import (
    copy_bandwidth,
    env_vars,
    graphed,
    median_seconds,
    synchronize,
)
from mlra.cache import CacheLayout
from mlra.decoding import DecodeStep

VARIANTS = ("mlra_4", "mla", "gqa")
CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)
BATCHES = (1, 32)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(t)) for t in text.split(",") if t.strip())


def build_model(name: str, size: str, max_ctx: int, device: torch.device,
                dtype: torch.dtype) -> Transformer:
    cfg = ModelConfig.preset(name, size=size, max_seq_len=max(max_ctx + 1, 2048),
                             zero_init_output=False)
    return random_model(cfg, device, dtype)


MODE_ENV: dict[str, dict[str, str]] = {
    "fused": {},
    "fused-nopdl": {"MLRA_PDL": "0"},
    "fused-noprefetch": {"MLRA_PDL_PREFETCH": "0"},
    "graph": {},
    "compile": {},
}
"""Decode-step forms and the environment each runs under: ``fused`` (the default on a GPU:
fused kernels, programmatic dependent launch with L2 prefetch on Hopper), ``fused-nopdl`` and
``fused-noprefetch`` (the same kernels launched plainly / without the prefetch, for an in-run
comparison), ``graph`` (module by module), ``compile`` (module by module, dense parts
compiled)."""


@torch.no_grad()
def bench_config(model: Transformer, batch: int, context: int, page: int, reps: int,
                 bandwidth: float, use_graph: bool, mode: str = "graph") -> dict:
    cfg = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cache, block_table, seq_lens = random_paged_cache(cfg, batch, context, page, dtype, device)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)

    decode = DecodeStep(model, cache, compile=mode == "compile",
                        fused=mode.startswith("fused"))

    def step() -> torch.Tensor:
        return decode(ids, block_table, seq_lens)

    t0 = time.time()
    for _ in range(3):  # warm-up: Triton / Inductor compilation, cuBLAS heuristics
        step()
    synchronize(device)
    warmup_s = time.time() - t0
    eager = median_seconds(step, device, max(3, reps // 4))
    fn, graph_error = graphed(step, device, use_graph)
    graph_s = None
    if fn is not step:
        for _ in range(3):
            fn()
        graph_s = median_seconds(fn, device, reps)
    measured = graph_s if graph_s is not None else eager
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cache_bytes = batch * (context + 1) * cache.bytes_per_token()
    floor = (weight_bytes + cache_bytes) / bandwidth
    pool = next(iter(cache.pools[0].values()))
    row = {
        "variant": cfg.name, "batch": batch, "context": context, "page_size": page,
        "weight_bytes": weight_bytes, "cache_bytes_read": cache_bytes,
        "cache_bytes_per_token": cache.bytes_per_token(),
        "floor_ms": floor * 1e3, "step_ms": measured * 1e3, "eager_ms": eager * 1e3,
        "cuda_graph": graph_s is not None, "ratio": measured / floor,
        "tokens_per_s": batch / measured,
        "kernel": "triton" if kernels.use_triton(pool) else "torch-reference",
    }
    if graph_error:
        row["graph_error"] = graph_error
    prefix = "" if mode == "graph" else mode + "+"
    row["mode"] = prefix + ("graph" if graph_s is not None else "eager")
    row["fused"] = decode.fused
    row["warmup_s"] = round(warmup_s, 1)
    return row


def format_table(result: dict) -> str:
    lines = [
        f"# End-to-end decode, {result['device']}", "",
        f"torch {result['torch']}, copy bandwidth {result['copy_bandwidth_GBps']:.0f} GB/s "
        f"(read+write), {result['dtype']}, paged cache (page {result['page_size']}), random "
        f"weights, size {result['size']}. floor = (weights + cache read) / copy bandwidth.", "",
        "| variant | batch | context | mode | weights GB | cache GB | floor ms | step ms | "
        "eager ms | step/floor | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['variant']} | {r['batch']} | {r['context']} | "
                         f"{r.get('mode', '')} | {r.get('skipped') or r.get('error')} |||||||")
            continue
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['context']} | {r['mode']} | "
            f"{r['weight_bytes'] / 1e9:.2f} | {r['cache_bytes_read'] / 1e9:.2f} | "
            f"{r['floor_ms']:.3f} | {r['step_ms']:.3f} | {r['eager_ms']:.3f} | "
            f"{r['ratio']:.2f} | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out/e2e_decode")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--size", default="paper", help="model preset size (paper = 2.9B)")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=40, help="timed graph replays per config")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-graph", action="store_true", help="time eager steps only")
    p.add_argument("--modes", default="fused,graph,compile",
                   help="decode-step forms to time: fused (the fused per-layer kernels, the "
                   "default on a GPU), fused-nopdl / fused-noprefetch (the same without "
                   "programmatic dependent launch / its L2 prefetch), graph (module by module), "
                   "compile (module by module, dense parts compiled); all replayed as CUDA "
                   "graphs")
    p.add_argument("--compile-batches", default="1",
                   help="batch sizes also measured with the dense per-layer parts compiled by "
                   "torch.compile (comma-separated; '' for none)")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="stop starting new configurations after this many seconds")
    args = p.parse_args(argv)
    t_start = time.time()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    contexts, batches = _ints(args.contexts), _ints(args.batches)
    bandwidth = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    result = {
        "device": name or device.type, "torch": torch.__version__,
        "triton": getattr(sys.modules.get("triton"), "__version__", None),
        "copy_bandwidth_GBps": bandwidth / 1e9, "page_size": args.page_size, "size": args.size,
        "dtype": str(dtype).replace("torch.", ""), "results": [],
    }
    print(f"{result['device']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)

    def save() -> None:
        result["triton"] = getattr(sys.modules.get("triton"), "__version__", None)
        (out_dir / "e2e_decode.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "e2e_decode.md").write_text(format_table(result))

    compile_batches = _ints(args.compile_batches)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODE_ENV)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODE_ENV)}")

    def run_one(model: Transformer, variant: str, batch: int, context: int,
                mode: str) -> dict:
        row = {"variant": variant, "batch": batch, "context": context,
               "mode": "graph" if mode == "graph" else mode + "+graph"}
        if time.time() - t_start > args.budget_s:
            row["skipped"] = "time budget"
            return row
        per_token = (CacheLayout.from_config(model.config).elements_per_token
                     * dtype.itemsize * model.config.n_layers)
        need = batch * math.ceil((context + 1) / args.page_size) * args.page_size * per_token
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            if need > free - (3 << 30):
                row["skipped"] = f"cache {need / 1e9:.0f} GB > free {free / 1e9:.0f} GB - 3 GB"
                print(f"{variant} b={batch} ctx={context}: {row['skipped']}", flush=True)
                return row
        try:
            with env_vars(MODE_ENV[mode]):
                row = bench_config(model, batch, context, args.page_size, args.reps,
                                   bandwidth, not args.no_graph, mode=mode)
        except Exception as exc:
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "step_ms" in row:
            print(f"{variant} b={batch} ctx={context} {row['mode']}: step {row['step_ms']:.3f} "
                  f"ms, floor {row['floor_ms']:.3f} ms, ratio {row['ratio']:.2f}, "
                  f"{row['tokens_per_s']:.0f} tok/s ({row['kernel']}, warm-up "
                  f"{row['warmup_s']} s)", flush=True)
        return row

    for variant in (v.strip() for v in args.variants.split(",") if v.strip()):
        model = build_model(variant, args.size, max(contexts), device, dtype)
        for batch in batches:
            for context in contexts:
                for mode in modes:
                    if mode == "compile" and batch not in compile_batches:
                        continue
                    row = run_one(model, variant, batch, context, mode)
                    result["results"].append(row)
                    save()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save()
    print(format_table(result))
    print(f"wrote {out_dir / 'e2e_decode.json'} in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
