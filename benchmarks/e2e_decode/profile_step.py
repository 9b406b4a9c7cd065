"""Where a batch-1 decode step's time goes: kernels per step, their time, and the idle gaps.

Profiles CUDA-graph replays of one :class:`~mlra.decoding.DecodeStep` of the paper-size model
(random weights, bf16, random paged cache) with ``torch.profiler`` and prints, per mode
(graph, compile+graph): wall time per step, kernels per step, the sum of kernel times (the
rest of the wall time is the GPU idle between kernels), and the kernels grouped by name with
their share of the step and an estimate of the bytes each group reads (weights only: the GEMMs)
against the copy bandwidth.

    PYTHONPATH=src python benchmarks/e2e_decode/profile_step.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mlra import ModelConfig, Transformer
from mlra.bench.models import random_model
from mlra.bench.paged import random_paged_cache
from mlra.decoding import DecodeStep


def build(name: str, context: int, device: torch.device) -> Transformer:
    cfg = ModelConfig.preset(name, size="paper", max_seq_len=max(context + 2, 2048),
                             zero_init_output=False)
    return random_model(cfg, device, torch.bfloat16)


def short(name: str, width: int = 60) -> str:
    for key in ("gemv", "gemm", "Kernel2", "splitKreduce", "nvjet", "cutlass"):
        if key in name:
            return f"[matmul] {name[:width]}"
    return name[:width]


@torch.no_grad()
def capture_step(step: DecodeStep, ids, table, lens,
                 capture_context=contextlib.nullcontext) -> torch.cuda.CUDAGraph:
    """``step`` warmed up (kernels compiled) and captured in a CUDA graph (inside
    ``capture_context()``, e.g. an active kernel trace), replayed a few times."""
    for _ in range(3):
        step(ids, table, lens)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with capture_context(), torch.cuda.graph(graph):
        step(ids, table, lens)
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    return graph


def replay_ms(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    """Milliseconds per replay of ``graph`` over ``reps`` back-to-back replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


@torch.no_grad()
def profile_mode(model: Transformer, context: int, compile: bool | dict, reps: int,
                 fused: bool = False, batch: int = 1) -> dict:
    device = next(model.parameters()).device
    cfg = model.config
    cache, table, lens = random_paged_cache(cfg, batch, context, 64, torch.bfloat16, device)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    torch._dynamo.reset()  # each mode compiles afresh
    graph = capture_step(DecodeStep(model, cache, compile=compile, fused=fused), ids, table,
                         lens)
    wall_ms = replay_ms(graph, reps)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for avg in prof.key_averages():  # CUDA activity only: the kernels (and memcpys) replayed
        if avg.device_time_total > 0:
            g = groups[short(avg.key)]
            g[0] += avg.count
            g[1] += avg.device_time_total / 1e3  # ms
    exposed = exposed_times(prof, reps)
    positions = position_times(prof, reps, model.config.n_layers)
    kernels = sum(g[0] for g in groups.values()) / reps
    busy = sum(g[1] for g in groups.values()) / reps
    table_rows = sorted(((n, c / reps, t / reps) for n, (c, t) in groups.items()),
                        key=lambda r: -r[2])
    return {"compile": compile, "wall_ms": wall_ms, "kernels_per_step": kernels,
            "kernel_ms": busy, "idle_ms": wall_ms - busy,
            "groups": [{"name": n, "per_step": c, "ms": t,
                        "exposed_ms": exposed.get(n, 0.0)} for n, c, t in table_rows],
            "positions": positions}


def exposed_times(prof, reps: int) -> dict[str, float]:
    """Per kernel group, ms per step from each kernel's start to the next kernel's start: with
    overlapping (PDL) launches, the share of the step each kernel holds the GPU's critical
    path (the groups sum to the span of the replays; the gap between two replays counts
    to the last kernel of a step)."""
    spans = sorted((e.time_range.start, short(e.name)) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0)
    out: dict[str, float] = defaultdict(float)
    for (t0, name), (t1, _) in zip(spans, spans[1:], strict=False):
        out[name] += (t1 - t0) / 1e3 / reps
    return dict(out)


def roles(names: list[str], n_layers: int, steps: int = 1) -> list[str]:
    """Launch position names for the kernel names of ``steps`` consecutive steps: a kernel
    launched ``k`` times per layer is ``name[0..k-1]`` in step order, layer after layer;
    launches beyond ``k x n_layers`` in a step (the head) are ``name[extra]``."""
    count: dict[str, int] = defaultdict(int)
    for n in names:
        count[n] += 1
    seen: dict[str, int] = defaultdict(int)
    out = []
    for n in names:
        per_step = count[n] // steps
        i = seen[n] % per_step
        seen[n] += 1
        k = per_step // n_layers
        out.append(f"{n}[{i % k}]" if k and i < k * n_layers else f"{n}[extra]")
    return out


def position_times(prof, reps: int, n_layers: int) -> list[dict]:
    """Per launch position of a layer, in step order: a kernel launched ``k`` times per layer
    is split into roles ``name[0] .. name[k-1]`` (its occurrences taken in step order, layer
    after layer; launches beyond ``k x n_layers`` -- the head -- are ``name[extra]``), each with
    its exposed and own (start to end, PDL wait included) microseconds per launch, averaged
    over layers and replays. Shows which of a layer's projection launches holds the time."""
    events = sorted((e.time_range.start, e.time_range.end, short(e.name)) for e in prof.events()
                    if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0)
    if not events:
        return []
    sums: dict[str, list[float]] = {}
    order: list[str] = []
    labels = roles([name for _, _, name in events], n_layers, reps)
    for (t0, t1, _), nxt, role in zip(events, [*events[1:], None], labels, strict=True):
        if role not in sums:
            sums[role] = [0, 0.0, 0.0]
            order.append(role)
        r = sums[role]
        r[0] += 1
        r[1] += ((nxt[0] if nxt else t1) - t0)
        r[2] += t1 - t0
    return [{"role": n, "per_step": sums[n][0] / reps, "exposed_us": sums[n][1] / sums[n][0],
             "own_us": sums[n][2] / sums[n][0]} for n in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="mlra_4")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--modes", default="fused,graph,compile",
                   help="comma-separated: fused (the fused per-layer kernels), graph, compile, "
                   "or a torch.compile mode such as max-autotune-no-cudagraphs")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    model = build(args.variant, args.context, device)
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    results = []
    lines = [f"# Decode step profile: {args.variant}, batch {args.batch}, {args.context} "
             "cached tokens, "
             f"{torch.cuda.get_device_name(device)}", "",
             f"torch {torch.__version__}; weights {weights / 1e9:.2f} GB; "
             f"`{' '.join(['python', *sys.argv])}`", ""]
    for mode in args.modes.split(","):
        compile = {"graph": False, "compile": True, "fused": False}.get(mode, {"mode": mode})
        r = profile_mode(model, args.context, compile, args.reps, fused=mode == "fused",
                         batch=args.batch)
        r["mode"] = mode
        results.append(r)
        lines += [f"## {mode}: {r['wall_ms']:.3f} ms per step, {r['kernels_per_step']:.0f} "
                  f"kernels, kernel time {r['kernel_ms']:.3f} ms, idle {r['idle_ms']:.3f} ms", "",
                  "| kernel | per step | ms per step | share | exposed ms (start to next "
                  "start) |", "|---|---|---|---|---|"]
        lines += [f"| `{g['name']}` | {g['per_step']:.0f} | {g['ms']:.3f} | "
                  f"{g['ms'] / r['wall_ms']:.1%} | {g['exposed_ms']:.3f} |"
                  for g in r["groups"][: args.top]]
        lines.append("")
        if r["positions"]:
            lines += [f"### {mode}: per launch position (us per launch, layers and replays "
                      "averaged)", "", "| role | per step | exposed us | own us |",
                      "|---|---|---|---|"]
            lines += [f"| `{q['role']}` | {q['per_step']:.0f} | {q['exposed_us']:.2f} | "
                      f"{q['own_us']:.2f} |" for q in r["positions"]]
            lines.append("")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.md").write_text("\n".join(lines))
        (out / "profile.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
