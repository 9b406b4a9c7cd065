#!/usr/bin/env python
"""Tensor-parallel decode: end-to-end decode-step latency and tokens/s at TP 1, 2, 4.

Run under torchrun, one process per GPU (NCCL; NVLink multicast kept off). One invocation
measures TP 1 and TP = the number of processes; TP 2 on a 4-GPU machine is a second invocation
with ``--nproc-per-node 2`` whose rows are merged into the same ``OUT/tp_decode.json``::

    torchrun --standalone --nproc-per-node 2 benchmarks/tp/bench_tp_decode.py --out "$OUT"

For every variant (paper-size MLRA-4, MLA with its latent replicated, GQA, GLA-2; random
weights, bf16) each rank builds its shard with :func:`mlra.parallel.make_plan` -- the same
:class:`~mlra.parallel.TensorParallelTransformer` that ``mlra generate --tp`` runs -- and times
one decode step of the whole model (vocab-parallel embedding, 24 layers with paged-cache
attention through ``mlra.kernels`` and the all-reduces, all-gathered head) captured in a CUDA
graph and replayed. The rank's paged cache is filled with random data instead of a prefill
(pages scattered over the pool). TP 1 runs on every rank at once, each rank an independent
single-GPU replica (no collectives); TP = world uses the default process group.

No process subgroup is ever created. With ``init_process_group(..., device_id=...)`` (eager
NCCL) ``new_group`` makes every rank *outside* a new group call ``ncclCommSplit`` with
NOCOLOR on the default communicator -- whatever backend the new group has -- while the members
of a gloo group call no split at all: the split, a collective over all ranks, never completes
and the job hangs silently (this script's first GPU runs did, with gloo groups over ranks
[0]). Only the world gloo group used for coordination is created, by every rank.

Reported per (variant, TP, batch, context): ``step_ms`` (median replay, slowest rank),
``tokens_per_s`` = batch / step, ``speedup_vs_tp1``, the bytes one rank must read per step
(its weights + its cache), ``floor_ms`` = those bytes / measured copy bandwidth, and
``comm_ms``: the step's collectives alone (1 + 2 x layers all-reduces of [batch, d] and the
logits all-gather), captured and timed separately. Configurations whose cache does not fit are
recorded as skipped; new configurations stop after ``--budget-s``. Results go to
``OUT/tp_decode.json`` and ``OUT/tp_decode.md`` after every configuration.

Diagnostics: every rank writes rank-tagged progress lines to stderr at every stage; when a rank
makes no progress for ``--watchdog-s`` seconds it prints every thread's Python stack (again
every ``--watchdog-s`` while stuck; a C-level ``faulthandler`` timer does it even when the GIL
is held).

CPU smoke test (gloo, tiny models, no graphs)::

    GLOO_SOCKET_IFNAME=lo torchrun --standalone --nproc-per-node 2 \\
        benchmarks/tp/bench_tp_decode.py --device cpu --size tiny --contexts 64,256 \\
        --batches 1,4 --reps 3 --out /tmp/tpsmoke
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

_T0 = time.time()
_RANK = os.environ.get("RANK", "0")


class _Watchdog:
    """Rank-tagged progress lines on stderr; stacks of every thread when progress stops.

    A daemon thread prints ``WATCHDOG`` with the last stage and ``faulthandler.dump_traceback``
    when no :meth:`stage` call came for ``seconds`` (repeating while stuck). A
    ``faulthandler.dump_traceback_later(2 x seconds, repeat=True)`` timer, re-armed by every
    stage and every thread dump, covers a main thread that holds the GIL in C code.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = time.monotonic()  # time of the last stage
        self.next_dump = self.last + seconds
        self.what = "start"
        self.log = None  # a per-rank file that gets every line and stack dump as well
        self.early: list[str] = []  # lines printed before the file was known
        self.lock = threading.Lock()
        faulthandler.enable(file=sys.stderr, all_threads=True)
        self._arm()
        threading.Thread(target=self._watch, name="tp-bench-watchdog", daemon=True).start()

    def _arm(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        if self.seconds > 0:
            faulthandler.dump_traceback_later(2 * self.seconds, repeat=True, file=sys.stderr)

    def configure(self, seconds: float) -> None:
        self.seconds = seconds
        self.stage(f"watchdog {seconds:g} s" if seconds > 0 else "watchdog off")

    def log_to(self, path: Path) -> None:
        """Also append every line and stack dump to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process)
        self.log.write("".join(line + "\n" for line in self.early))

    def _print(self, line: str) -> None:
        line = f"[tp-bench rank {_RANK} +{time.time() - _T0:.1f}s] {line}"
        print(line, file=sys.stderr, flush=True)
        if self.log is not None:
            print(line, file=self.log, flush=True)
        else:
            self.early.append(line)

    def stage(self, what: str) -> None:
        """Log ``what`` (stderr, flushed, tagged with the rank and elapsed time)."""
        with self.lock:
            self.last, self.what = time.monotonic(), what
            self.next_dump = self.last + self.seconds
            self._arm()
        self._print(what)

    def _watch(self) -> None:
        while True:
            time.sleep(2.0)
            if self.seconds <= 0:
                continue
            with self.lock:
                now = time.monotonic()
                if now < self.next_dump:
                    continue
                idle, what = now - self.last, self.what
                self.next_dump = now + self.seconds  # again after another `seconds`
                self._arm()
            self._print(f"WATCHDOG: no progress for {idle:.0f} s since '{what}'; stacks of "
                        "every thread:")
            for f in (sys.stderr, self.log):
                if f is not None:
                    f.flush()
                    faulthandler.dump_traceback(file=f, all_threads=True)


def _argv_watchdog_s(argv: list[str]) -> float:
    """``--watchdog-s`` from the command line before argparse runs (default 150)."""
    for i, a in enumerate(argv):
        try:
            if a == "--watchdog-s":
                return float(argv[i + 1])
            if a.startswith("--watchdog-s="):
                return float(a.split("=", 1)[1])
        except (IndexError, ValueError):
            break
    return 150.0


WATCHDOG = _Watchdog(_argv_watchdog_s(sys.argv[1:]))
progress = WATCHDOG.stage
progress(f"started (pid {os.getpid()}, LOCAL_RANK {os.environ.get('LOCAL_RANK')}, "
         f"WORLD_SIZE {os.environ.get('WORLD_SIZE')}); importing torch")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import traceback  # noqa: E402
from datetime import timedelta  # noqa: E402

for _key, _value in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_key, _value)  # before anything initialises NCCL

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

progress(f"torch {torch.__version__} imported; importing mlra")

from mlra import ModelConfig, kernels  # noqa: E402
from mlra.bench.paged import random_paged_cache  # noqa: E402
from mlra.bench.timing import copy_bandwidth, graphed, median_seconds, synchronize  # noqa: E402
from mlra.cache import CacheLayout  # noqa: E402
from mlra.decoding import DecodeStep  # noqa: E402
from mlra.parallel import (  # noqa: E402
    TensorParallelTransformer,
    TPContext,
    allowed_degrees,
    make_plan,
)

progress("imports done")

VARIANTS = ("mlra_4", "mla", "gqa", "gla_2")
CONTEXTS = (8192, 32768, 131072, 262144)
BATCHES = (1, 32, 128)
ROW_KEY = ("variant", "tp", "batch", "context")
MERGE_KEYS = ("size", "page_size", "dtype", "note")
"""A previous result file is merged only when these match this run's."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(t)) for t in text.split(",") if t.strip())


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


class Coord:
    """Coordination of every rank over one gloo group of the whole world (long timeout): every
    rank runs every configuration in lockstep, so all of them take part in every call."""

    def __init__(self, world: int, timeout_s: float) -> None:
        self.world = world
        self.group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
                      if world > 1 else None)

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank passes True."""
        t = torch.tensor([1 if flag else 0])
        if self.group is not None:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order."""
        if self.group is None:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        """Wait for every rank (a gloo all-reduce of a CPU tensor, like :meth:`agree`)."""
        self.agree(False)


def tp_context(tp: int, rank: int, world: int, device: torch.device, backend: str) -> TPContext:
    """This rank's context at degree ``tp``: a one-rank replica (TP 1, no collectives) or the
    whole world over the default process group (no subgroup is ever created)."""
    if tp == 1:
        return TPContext(0, 1, device, backend, None)
    if tp != world:
        raise ValueError(f"TP {tp} needs its own run with --nproc-per-node {tp}")
    return TPContext(rank, world, device, backend, dist.group.WORLD)


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
    synchronize(ctx.device)
    fn, err = graphed(comm, ctx.device, use_graph)
    t = median_seconds(fn, ctx.device, reps)
    single, _ = graphed(one, ctx.device, use_graph)
    t1 = median_seconds(single, ctx.device, reps)
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
    cache, block_table, seq_lens = random_paged_cache(cfg, batch, context, page, dtype, device)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)  # same ids on every rank
    decode = DecodeStep(model, cache, compile=compile)

    def step() -> torch.Tensor:
        return decode(ids, block_table, seq_lens)

    t0 = time.time()
    for _ in range(3):  # Triton / cuBLAS / NCCL warm-up
        step()
    synchronize(device)
    warmup_s = time.time() - t0
    eager = median_seconds(step, device, max(2, reps // 4))
    fn, graph_error = graphed(step, device, use_graph)
    measured = median_seconds(fn, device, reps) if fn is not step else eager
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
    runs = result.get("runs") or []
    lines = [
        f"# Tensor-parallel decode, {result['device']}", "",
        f"torch {result['torch']}, triton {result['triton']}, {result['backend']}, "
        f"{result['dtype']}, size {result['size']}, page {result['page_size']}, random weights; "
        f"{result['note']}", "",
        "Runs (TP 1 rows: every rank an independent one-GPU replica, slowest reported):", "",
    ]
    for run in runs:
        lines.append(f"- TP {', '.join(map(str, run['degrees']))} on {run['world_size']} "
                     f"process(es), copy bandwidth {run['copy_bandwidth_GBps']:.0f} GB/s "
                     f"(read+write): `{run['command']}`")
    lines += [
        "", "per rank: weights + cache bytes it reads per step; floor = those bytes / copy "
        "bandwidth; comm = the step's collectives alone.", "",
        "| variant | TP | batch | context | step ms | tokens/s | vs TP1 | weights GB/rank | "
        "cache GB/rank | floor ms | comm ms | mode |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted_rows(result["results"]):
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


def sorted_rows(rows: list[dict]) -> list[dict]:
    order = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(rows, key=lambda r: (order.get(r["variant"], len(order)), r["variant"],
                                       r["batch"], r["context"], r["tp"]))


def _find(rows: list[dict], **key) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()) and "step_ms" in r:
            return r
    return None


def update_speedups(rows: list[dict]) -> None:
    """``speedup_vs_tp1`` of every measured row whose TP 1 counterpart is measured (rows may
    come from several runs)."""
    for r in rows:
        r.pop("speedup_vs_tp1", None)
        if "step_ms" not in r:
            continue
        base = _find(rows, variant=r["variant"], tp=1, batch=r["batch"], context=r["context"])
        if base:
            r["speedup_vs_tp1"] = base["step_ms"] / r["step_ms"]


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


def merge_previous(path: Path, result: dict, degrees: list[int], fresh: bool) -> None:
    """Keep the rows and runs of an earlier invocation in ``path`` (other TP degrees, same
    size / page / dtype / GQA heads), so that TP 2 measured with 2 processes and TP 1 / 4
    measured with 4 end up in one table. Rows of this run's degrees are replaced."""
    if fresh or not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"not merging {path}: {exc}", flush=True)
        return
    differ = [k for k in MERGE_KEYS if old.get(k) != result.get(k)]
    if differ:
        print(f"not merging {path}: different {', '.join(differ)} (overwriting it)", flush=True)
        return
    result["results"] = [r for r in old.get("results", []) if r.get("tp") not in degrees]
    result["runs"] = [run for run in old.get("runs", [])
                      if set(run.get("degrees", [])) - set(degrees)]
    print(f"merged {len(result['results'])} rows of TP "
          f"{sorted({r['tp'] for r in result['results']})} from {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out/tp")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tp", default=None,
                   help="degrees to measure, each 1 or the number of processes (default both; "
                   "for TP 2 on 4 GPUs start a second run with --nproc-per-node 2, merged "
                   "into the same --out)")
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
                   help="start no new configuration after this many seconds since start-up")
    p.add_argument("--watchdog-s", type=float, default=150.0,
                   help="print every thread's stack when a rank makes no progress for this "
                   "long (and again every as long while stuck); 0 disables")
    p.add_argument("--coord-timeout-s", type=float, default=900.0,
                   help="timeout of the gloo coordination collectives")
    p.add_argument("--fresh", action="store_true",
                   help="do not merge the rows of other TP degrees already in OUT/tp_decode.json")
    p.add_argument("--no-rank-logs", action="store_true",
                   help="do not copy the progress lines and stack dumps to OUT/logs/rankN.log")
    args = p.parse_args(argv)
    if not args.no_rank_logs:
        WATCHDOG.log_to(Path(args.out) / "logs" / f"rank{_RANK}.log")
    WATCHDOG.configure(args.watchdog_s)

    cpu = args.device == "cpu"
    backend = "gloo" if cpu else "nccl"
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
    world = int(os.environ["WORLD_SIZE"])
    degrees = sorted(set(_ints(args.tp) if args.tp else (1, world)))
    bad = [t for t in degrees if t not in (1, world)]
    if bad:  # checked before any process group exists: every rank exits the same way
        print(f"error: TP {bad} with {world} processes: one run measures TP 1 and TP = the "
              f"number of processes; run TP {bad[0]} as `torchrun --nproc-per-node {bad[0]} "
              "...` with the same --out (rows are merged)", file=sys.stderr, flush=True)
        return 2
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu") if cpu else torch.device(f"cuda:{local}")
    if not cpu:
        if torch.cuda.device_count() <= local:
            print(f"error: LOCAL_RANK {local} but {torch.cuda.device_count()} GPU(s) visible",
                  file=sys.stderr, flush=True)
            return 2
        torch.cuda.set_device(device)
        progress(f"cuda device set: {device} ({torch.cuda.get_device_name(device)})")
    progress(f"init_process_group({backend}"
             + ("" if cpu else f", device_id={device}") + ") ...")
    dist.init_process_group(backend, timeout=timedelta(seconds=300),
                            **({} if cpu else {"device_id": device}))
    rank = dist.get_rank()
    main_rank = rank == 0
    progress(f"process group ready: rank {rank} of {world}")
    coord = Coord(world, args.coord_timeout_s)
    progress("coordination group (gloo, all ranks) ready")
    coord.barrier()
    progress("all ranks past the first barrier")
    dtype = torch.float32 if cpu else torch.bfloat16
    contexts, batches = _ints(args.contexts), _ints(args.batches)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bandwidth = copy_bandwidth(device)
    progress(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    out_dir = Path(args.out)
    name = torch.cuda.get_device_name(device) if not cpu else (platform.processor() or "cpu")
    command = ("torchrun --standalone --nproc-per-node "
               f"{world} benchmarks/tp/bench_tp_decode.py " + " ".join(sys.argv[1:]))
    result = {
        "device": name, "world_size": world, "backend": backend, "torch": torch.__version__,
        "triton": None, "copy_bandwidth_GBps": bandwidth / 1e9, "dtype": str(dtype)[6:],
        "size": args.size, "page_size": args.page_size, "command": command,
        "note": ("GQA with " + (f"{args.gqa_kv_heads} K/V heads" if args.gqa_kv_heads
                                else "the preset's K/V heads")
                 + "; MLA at TP > 1 replicates its latent and splits the heads"),
        "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE",
                                               "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                               "NVSHMEM_DISABLE_NVLS")},
        "runs": [],
        "results": [],
    }
    if main_rank:
        merge_previous(out_dir / "tp_decode.json", result, degrees, args.fresh)
    result["runs"].append({"command": command, "world_size": world, "degrees": degrees,
                           "device": name, "copy_bandwidth_GBps": bandwidth / 1e9,
                           "torch": torch.__version__,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(_T0))})

    def save() -> None:
        if not main_rank:
            return
        triton = getattr(sys.modules.get("triton"), "__version__", None)
        result["triton"] = result["runs"][-1]["triton"] = triton
        update_speedups(result["results"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tp_decode.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / "tp_decode.md").write_text(format_table(result))

    if main_rank:
        print(f"{name} x {world} ({backend}): copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
              f"TP {degrees}", flush=True)
    save()
    comm_cache: dict[tuple[int, int], dict] = {}
    for variant in variants:
        cfg = variant_config(variant, args.size, max(contexts), args.gqa_kv_heads or None)
        for tp in degrees:
            if tp not in allowed_degrees(cfg):
                if main_rank:
                    print(f"{variant}: TP {tp} not possible (allowed "
                          f"{allowed_degrees(cfg)[:6]}...)", flush=True)
                continue
            ctx = tp_context(tp, rank, world, device, backend)
            run_degree(args, coord, ctx, main_rank, cfg, variant, contexts, batches, dtype,
                       bandwidth, comm_cache, result, save)
            coord.barrier()
    save()
    if main_rank:
        print(format_table(result))
        print(f"wrote {out_dir / 'tp_decode.json'} in {time.time() - _T0:.0f} s", flush=True)
    progress("destroy_process_group ...")
    dist.destroy_process_group()
    progress("done")
    WATCHDOG.configure(0)
    return 0


def run_degree(args, coord: Coord, ctx: TPContext, main_rank: bool, cfg: ModelConfig,
               variant: str, contexts, batches, dtype, bandwidth: float, comm_cache: dict,
               result: dict, save) -> None:
    """Every configuration of one (variant, TP degree); every rank runs it (TP 1: as an
    independent replica), in lockstep through ``coord``."""
    tp = ctx.world_size
    progress(f"{variant} TP{tp}: building shard")
    model = build_shard(cfg, ctx, dtype)
    local_cfg = model.shard.config
    progress(f"{variant} TP{tp}: shard built "
             f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    use_graph = not args.no_graph
    for batch in batches:
        key = (tp, batch)
        if key not in comm_cache:
            progress(f"TP{tp} b={batch}: measuring collectives")
            comm_cache[key] = measure_comm(ctx, cfg, local_cfg.vocab_size, batch, dtype,
                                           args.reps, use_graph)
        for context in contexts:
            row = {"variant": variant, "tp": tp, "batch": batch, "context": context}
            per_token = (CacheLayout.from_config(local_cfg).elements_per_token
                         * dtype.itemsize * cfg.n_layers)
            need = batch * math.ceil((context + 1) / args.page_size) * args.page_size * per_token
            reason = None
            if time.time() - _T0 > args.budget_s:
                reason = "time budget"
            elif ctx.device.type == "cuda":
                free = torch.cuda.mem_get_info(ctx.device)[0]
                if need > free - (6 << 30):
                    reason = f"cache {need / 1e9:.0f} GB/rank > free {free / 1e9:.0f} GB - 6 GB"
            if coord.agree(reason is not None):
                row["skipped"] = reason or "skipped on another rank"
            else:
                progress(f"{variant} TP{tp} b={batch} ctx={context}: running")
                try:
                    got = bench_config(model, batch, context, args.page_size, args.reps,
                                       use_graph, args.compile)
                    error = None
                except Exception as exc:  # one configuration failing does not end the run
                    traceback.print_exc()
                    got, error = None, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                rows = coord.gather(got)
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
                        kernel=mine["kernel"], warmup_s=mine["warmup_s"],
                        ranks=len(rows), **comm_cache[key],
                    )
                    if "graph_error" in mine:
                        row["graph_error"] = mine["graph_error"]
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
