#!/usr/bin/env python
"""Tensor-parallel decode: end-to-end decode-step latency and tokens/s at TP 1, 2, 4.

Run under torchrun, one process per GPU (NCCL; NVLink multicast kept off)::

    torchrun --standalone --nproc-per-node 2 benchmarks/tp/bench_tp_decode.py \
        --out "${OUT:-benchmarks/tp/results}"

For every variant (paper-size MLRA-4, MLA with its latent replicated, GQA, GLA-2; random
weights, bf16) and every TP degree up to the number of processes, each rank builds its shard
with :func:`mlra.parallel.make_plan` -- the same :class:`~mlra.parallel.TensorParallelTransformer`
that ``mlra generate --tp`` runs -- and times one decode step of the whole model (vocab-parallel
embedding, 24 layers with paged-cache attention through ``mlra.kernels`` and the all-reduces,
all-gathered head) captured in a CUDA graph and replayed. The rank's paged cache is filled with
random data instead of a prefill (pages scattered over the pool). Degrees below the number of
processes run on the first ranks while the others wait.

Reported per (variant, TP, batch, context): ``step_ms`` (median replay, slowest rank),
``tokens_per_s`` = batch / step, ``speedup_vs_tp1``, the bytes one rank must read per step
(its weights + its cache), ``floor_ms`` = those bytes / measured copy bandwidth, and
``comm_ms``: the step's collectives alone (1 + 2 x layers all-reduces of [batch, d] and the
logits all-gather), captured and timed separately. Configurations whose cache does not fit are
recorded as skipped; new configurations stop after ``--budget-s``. Results go to
``OUT/tp_decode.json`` and ``OUT/tp_decode.md`` after every configuration.

CPU smoke test (gloo, tiny models, no graphs)::

    torchrun --standalone --nproc-per-node 2 benchmarks/tp/bench_tp_decode.py --device cpu \
        --size tiny --contexts 64,200 --batches 1,3 --reps 2 --out /tmp/tp_smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

for _key, _value in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_key, _value)  # before anything initialises NCCL

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mlra import ModelConfig, kernels  # noqa: E402
from mlra.cache import CacheLayout, PagedKVCache  # noqa: E402
from mlra.decoding import DecodeStep  # noqa: E402
from mlra.parallel import (  # noqa: E402
    TensorParallelTransformer,
    TPContext,
    allowed_degrees,
    make_plan,
)

VARIANTS = ("mlra_4", "mla", "gqa", "gla_2")
CONTEXTS = (8192, 32768, 131072, 262144)
BATCHES = (1, 32, 128)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(t)) for t in text.split(",") if t.strip())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn, device: torch.device, reps: int) -> float:
    """Median seconds of ``fn()`` (CUDA events on GPU, wall clock on CPU)."""
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _graphed(fn, device: torch.device, use_graph: bool):
    """(callable to time, error or None): ``fn`` captured in a CUDA graph when possible."""
    if not use_graph or device.type != "cuda":
        return fn, None
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        _sync(device)
        return graph.replay, None
    except Exception as exc:  # record and time eagerly
        _sync(device)
        return fn, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def copy_bandwidth(device: torch.device) -> float:
    """Bytes moved per second (read + write) by a large device-to-device copy."""
    nbytes = (2 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    return 2 * nbytes / _median_s(lambda: dst.copy_(src), device, 10)


def variant_config(name: str, size: str, max_ctx: int, gqa_kv: int | None) -> ModelConfig:
    over: dict = {"max_seq_len": max(max_ctx + 1, 2048), "zero_init_output": False}
    if name == "gqa" and gqa_kv and ModelConfig.preset(name, size=size).n_heads % gqa_kv == 0:
        over["n_kv_heads"] = gqa_kv
    return ModelConfig.preset(name, size=size, **over)


def build_shard(cfg: ModelConfig, ctx: TPContext, dtype: torch.dtype) -> TensorParallelTransformer:
    """This rank's shard with random weights, built directly on the device (no full model)."""
    shard = make_plan(cfg, ctx.world_size).shard(ctx.rank)
    with torch.device("meta"):
        model = TensorParallelTransformer(shard, cfg, ctx)
    model = model.to(dtype=dtype).to_empty(device=ctx.device)
    torch.manual_seed(1234 + ctx.rank)
    with torch.no_grad():
        model.reset_parameters()
    return model.eval()


class Group:
    """The ranks taking part in one TP degree: NCCL (or gloo) group for the model, a gloo group
    with a long timeout for coordination."""

    def __init__(self, tp: int, world: int, device: torch.device, backend: str) -> None:
        ranks = list(range(tp))
        self.tp = tp
        self.member = dist.get_rank() < tp
        if tp == 1:
            self.group = None
        elif tp == world:
            self.group = dist.group.WORLD
        else:
            self.group = dist.new_group(ranks, backend=backend)
        self.coord = dist.new_group(ranks, backend="gloo", timeout=timedelta(minutes=30))
        self.ctx = (TPContext(dist.get_rank(), tp, device, backend, self.group)
                    if self.member else None)

    def agree(self, flag: bool) -> bool:
        """True on every member when any member passes True."""
        t = torch.tensor([1 if flag else 0])
        if self.tp > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.coord)
        return bool(t.item())

    def gather(self, obj: object) -> list:
        if self.tp == 1:
            return [obj]
        out: list = [None] * self.tp
        dist.all_gather_object(out, obj, group=self.coord)
        return out


@torch.no_grad()
def measure_comm(ctx: TPContext, cfg: ModelConfig, vocab_local: int, batch: int,
                 dtype: torch.dtype, reps: int, use_graph: bool) -> dict:
    """The collectives of one decode step alone: 1 + 2 x layers all-reduces of [batch, 1, d]
    and one all-gather of the local logits."""
    if ctx.world_size == 1:
        return {"comm_ms": 0.0, "all_reduce_us": 0.0}
    x = torch.zeros(batch, 1, cfg.d_model, dtype=dtype, device=ctx.device)
    y = torch.zeros(batch, 1, vocab_local, dtype=dtype, device=ctx.device)
    n = 1 + 2 * cfg.n_layers

    def comm():
        for _ in range(n):
            ctx.all_reduce(x)
        return ctx.all_gather_last(y)

    def one():
        return ctx.all_reduce(x)

    for _ in range(3):
        comm()
    _sync(ctx.device)
    fn, err = _graphed(comm, ctx.device, use_graph)
    t = _median_s(fn, ctx.device, reps)
    single, _ = _graphed(one, ctx.device, use_graph)
    t1 = _median_s(single, ctx.device, reps)
    out = {"comm_ms": t * 1e3, "all_reduce_us": t1 * 1e6}
    if err:
        out["comm_graph_error"] = err
    return out


@torch.no_grad()
def bench_config(model: TensorParallelTransformer, batch: int, context: int, page: int,
                 reps: int, use_graph: bool, compile: bool) -> dict:
    """One rank's measurement of one configuration (every member calls it in lockstep)."""
    cfg, device = model.config, model.tp.device
    dtype = next(model.parameters()).dtype
    per_seq = math.ceil((context + 1) / page)
    cache = PagedKVCache(cfg, batch * per_seq, page, dtype=dtype, device=device)
    for pools in cache.pools:
        for t in pools.values():
            t.normal_()
    perm = torch.randperm(batch * per_seq, generator=torch.Generator().manual_seed(0))
    block_table = perm.view(batch, per_seq).to(torch.int32).to(device)
    seq_lens = torch.full((batch,), context + 1, dtype=torch.int32, device=device)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)  # same ids on every rank
    decode = DecodeStep(model, cache, compile=compile)

    def step() -> torch.Tensor:
        return decode(ids, block_table, seq_lens)

    t0 = time.time()
    for _ in range(3):  # Triton / cuBLAS / NCCL warm-up
        step()
    _sync(device)
    warmup_s = time.time() - t0
    eager = _median_s(step, device, max(2, reps // 4))
    fn, graph_error = _graphed(step, device, use_graph)
    measured = _median_s(fn, device, reps) if fn is not step else eager
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    row = {
        "step_s": measured, "eager_s": eager, "cuda_graph": fn is not step,
        "weight_bytes": weight_bytes, "cache_bytes_per_token": cache.bytes_per_token(),
        "cache_bytes_read": batch * (context + 1) * cache.bytes_per_token(),
        "warmup_s": round(warmup_s, 1),
        "kernel": "triton" if kernels.use_triton(next(iter(cache.pools[0].values())))
        else "torch-reference",
    }
    if graph_error:
        row["graph_error"] = graph_error
    return row


def format_table(result: dict) -> str:
    lines = [
        f"# Tensor-parallel decode, {result['device']} x {result['world_size']}", "",
        f"torch {result['torch']}, triton {result['triton']}, {result['backend']}, copy "
        f"bandwidth {result['copy_bandwidth_GBps']:.0f} GB/s (read+write), {result['dtype']}, "
        f"size {result['size']}, page {result['page_size']}, random weights; {result['note']}",
        "", f"Command: `{result['command']}`", "",
        "per rank: weights + cache bytes it reads per step; floor = those bytes / copy "
        "bandwidth; comm = the step's collectives alone.", "",
        "| variant | TP | batch | context | step ms | tokens/s | vs TP1 | weights GB/rank | "
        "cache GB/rank | floor ms | comm ms | mode |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        head = f"| {r['variant']} | {r['tp']} | {r['batch']} | {r['context']} |"
        if "step_ms" not in r:
            lines.append(f"{head} {r.get('skipped') or r.get('error')} ||||||||")
            continue
        speed = f"{r['speedup_vs_tp1']:.2f}x" if r.get("speedup_vs_tp1") else ""
        lines.append(
            f"{head} {r['step_ms']:.3f} | {r['tokens_per_s']:.0f} | {speed} | "
            f"{r['weight_bytes'] / 1e9:.2f} | {r['cache_bytes_read'] / 1e9:.2f} | "
            f"{r['floor_ms']:.3f} | {r['comm_ms']:.3f} | {r['mode']} |")
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(result["results"])]
    return "\n".join(lines) + "\n"


def _find(rows: list[dict], **key) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()) and "step_ms" in r:
            return r
    return None


def targets(rows: list[dict]) -> list[str]:
    """Issue 8 (TP 2) and issue 6 (TP 4) targets at batch 1, contexts >= 128K."""
    out = []
    for ctx in sorted({r["context"] for r in rows if r["context"] >= 131072}):
        one = _find(rows, variant="mlra_4", tp=1, batch=1, context=ctx)
        for tp, want_tp1, want_mla in ((2, 1.5, 1.0), (4, 2.2, 2.0)):
            r = _find(rows, variant="mlra_4", tp=tp, batch=1, context=ctx)
            mla = _find(rows, variant="mla", tp=tp, batch=1, context=ctx)
            if r and one:
                x = one["step_ms"] / r["step_ms"]
                out.append(f"MLRA-4 TP{tp} vs TP1, batch 1, {ctx // 1024}K: {x:.2f}x "
                           f"(target >= {want_tp1}x) {'met' if x >= want_tp1 else 'NOT met'}")
            if r and mla:
                x = mla["step_ms"] / r["step_ms"]
                out.append(f"MLRA-4 TP{tp} vs MLA TP{tp}, batch 1, {ctx // 1024}K: {x:.2f}x "
                           f"(target > {want_mla}x) {'met' if x > want_mla else 'NOT met'}")
    return out or ["no batch-1 configuration >= 128K measured"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/tp/results")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tp", default="1,2,4", help="degrees (those above the process count and "
                   "those a variant cannot use are left out)")
    p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--size", default="paper")
    p.add_argument("--gqa-kv-heads", type=int, default=8,
                   help="K/V heads of GQA (the paper-size preset has 6, which 4 ranks cannot "
                   "split; 8 as the paper's decoding configuration; 0 keeps the preset)")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-graph", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the dense per-layer parts of the step (DecodeStep)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new configuration after this many seconds")
    args = p.parse_args(argv)
    t_start = time.time()

    cpu = args.device == "cpu"
    backend = "gloo" if cpu else "nccl"
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu") if cpu else torch.device(f"cuda:{local}")
    if not cpu:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=300),
                            **({} if cpu else {"device_id": device}))
    rank, world = dist.get_rank(), dist.get_world_size()
    main_rank = rank == 0
    dtype = torch.float32 if cpu else torch.bfloat16
    contexts, batches = _ints(args.contexts), _ints(args.batches)
    degrees = [t for t in _ints(args.tp) if t <= world]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    groups = {t: Group(t, world, device, backend) for t in degrees}  # every rank creates all
    coord_world = dist.new_group(backend="gloo", timeout=timedelta(minutes=30))
    bandwidth = copy_bandwidth(device)
    out_dir = Path(args.out)
    name = torch.cuda.get_device_name(device) if not cpu else (platform.processor() or "cpu")
    result = {
        "device": name, "world_size": world, "backend": backend, "torch": torch.__version__,
        "triton": None, "copy_bandwidth_GBps": bandwidth / 1e9, "dtype": str(dtype)[6:],
        "size": args.size, "page_size": args.page_size,
        "command": "torchrun --standalone --nproc-per-node "
                   f"{world} benchmarks/tp/bench_tp_decode.py " + " ".join(sys.argv[1:]),
        "note": ("GQA with " + (f"{args.gqa_kv_heads} K/V heads" if args.gqa_kv_heads
                                else "the preset's K/V heads")
                 + "; MLA at TP > 1 replicates its latent and splits the heads"),
        "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE",
                                               "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                               "NVSHMEM_DISABLE_NVLS")},
        "results": [],
    }

    def save() -> None:
        if not main_rank:
            return
        result["triton"] = getattr(sys.modules.get("triton"), "__version__", None)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tp_decode.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "tp_decode.md").write_text(format_table(result))

    if main_rank:
        print(f"{name} x {world} ({backend}): copy bandwidth {bandwidth / 1e9:.0f} GB/s",
              flush=True)
    comm_cache: dict[tuple[int, int], dict] = {}
    for variant in variants:
        cfg = variant_config(variant, args.size, max(contexts), args.gqa_kv_heads or None)
        for tp in degrees:
            if tp not in allowed_degrees(cfg):
                if main_rank:
                    print(f"{variant}: TP {tp} not possible (allowed "
                          f"{allowed_degrees(cfg)[:6]}...)", flush=True)
                continue
            g = groups[tp]
            if g.member:
                run_degree(args, g, cfg, variant, tp, contexts, batches, dtype, bandwidth,
                           comm_cache, result, save, t_start)
            dist.barrier(group=coord_world)  # idle ranks wait here (gloo, long timeout)
    save()
    if main_rank:
        print(format_table(result))
        print(f"wrote {out_dir / 'tp_decode.json'} in {time.time() - t_start:.0f} s", flush=True)
    dist.destroy_process_group()
    return 0


def run_degree(args, g: Group, cfg: ModelConfig, variant: str, tp: int, contexts, batches,
               dtype, bandwidth: float, comm_cache: dict, result: dict, save, t_start) -> None:
    """Every configuration of one (variant, TP degree), run by the members of ``g``."""
    ctx = g.ctx
    main_rank = ctx.rank == 0
    model = build_shard(cfg, ctx, dtype)
    local_cfg = model.shard.config
    use_graph = not args.no_graph
    for batch in batches:
        key = (tp, batch)
        if key not in comm_cache:
            comm_cache[key] = measure_comm(ctx, cfg, local_cfg.vocab_size, batch, dtype,
                                           args.reps, use_graph)
        for context in contexts:
            row = {"variant": variant, "tp": tp, "batch": batch, "context": context}
            per_token = (CacheLayout.from_config(local_cfg).elements_per_token
                         * dtype.itemsize * cfg.n_layers)
            need = batch * math.ceil((context + 1) / args.page_size) * args.page_size * per_token
            reason = None
            if time.time() - t_start > args.budget_s:
                reason = "time budget"
            elif ctx.device.type == "cuda":
                free = torch.cuda.mem_get_info(ctx.device)[0]
                if need > free - (6 << 30):
                    reason = f"cache {need / 1e9:.0f} GB/rank > free {free / 1e9:.0f} GB - 6 GB"
            if g.agree(reason is not None):
                row["skipped"] = reason or "skipped on another rank"
            else:
                try:
                    got = bench_config(model, batch, context, args.page_size, args.reps,
                                       use_graph, args.compile)
                    error = None
                except Exception as exc:  # one configuration failing does not end the run
                    traceback.print_exc()
                    got, error = None, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                rows = g.gather(got)
                if error or any(r is None for r in rows):
                    row["error"] = error or "failed on another rank"
                else:
                    step = max(r["step_s"] for r in rows)  # the slowest rank sets the pace
                    mine = rows[0]
                    bytes_read = mine["weight_bytes"] + mine["cache_bytes_read"]
                    row.update(
                        step_ms=step * 1e3, eager_ms=max(r["eager_s"] for r in rows) * 1e3,
                        tokens_per_s=batch / step, weight_bytes=mine["weight_bytes"],
                        cache_bytes_read=mine["cache_bytes_read"],
                        cache_bytes_per_token=mine["cache_bytes_per_token"],
                        bytes_read_per_rank=bytes_read, floor_ms=bytes_read / bandwidth * 1e3,
                        mode=("compile+" if args.compile else "")
                        + ("graph" if mine["cuda_graph"] else "eager"),
                        kernel=mine["kernel"], warmup_s=mine["warmup_s"], **comm_cache[key],
                    )
                    if "graph_error" in mine:
                        row["graph_error"] = mine["graph_error"]
                    base = _find(result["results"], variant=variant, tp=1, batch=batch,
                                 context=context)
                    if base:
                        row["speedup_vs_tp1"] = base["step_ms"] / row["step_ms"]
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            if main_rank:
                result["results"].append(row)
                save()
                if "step_ms" in row:
                    print(f"{variant} TP{tp} b={batch} ctx={context}: {row['step_ms']:.3f} ms, "
                          f"{row['tokens_per_s']:.0f} tok/s, floor {row['floor_ms']:.3f} ms, "
                          f"comm {row['comm_ms']:.3f} ms ({row['mode']}, {row['kernel']})",
                          flush=True)
                else:
                    print(f"{variant} TP{tp} b={batch} ctx={context}: "
                          f"{row.get('skipped') or row.get('error')}", flush=True)
    del model
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
