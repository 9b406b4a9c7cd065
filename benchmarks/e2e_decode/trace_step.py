"""Where a batch-1 decode step's critical path goes, from per-program timestamps.

With programmatic dependent launch a kernel starts while its predecessor runs and waits
(``griddepcontrol.wait``) until that one has finished, so a profiler's start / end times mix
a kernel's own work with its wait. Here every traced kernel writes the GPU's nanosecond timer
at four marks per program (:mod:`mlra.kernels.kernel_trace`: entry, past its wait, main loop
done, exit) during CUDA-graph replays of one fused :class:`~mlra.decoding.DecodeStep` of the
paper-size model, and per launch position of a layer (averaged over layers and replays, in
microseconds) this prints:

- ``early``: first program's entry to the first program past the wait (what could run before
  the dependency: prefetches, preloads);
- ``gap``: the previous traced launch's last exit to this launch's first program past its wait
  (the dependency's own latency; it also holds any untraced kernel in between: the Gluon and
  GQA attention kernels, the embedding);
- ``work``: first program past the wait to the last program's exit, split into ``main`` (to
  the last main loop done) and ``tail`` (split-K reductions, barriers, epilogues after it);
- ``share``: this launch's release to the next one's, the part of the step it holds (the
  shares add up to the step).

    PYTHONPATH=src python benchmarks/e2e_decode/trace_step.py --variant mlra_4 --context 8192
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from profile_step import build, capture_step, replay_ms, roles

from mlra.bench.paged import random_paged_cache
from mlra.decoding import DecodeStep
from mlra.kernels.kernel_trace import MARKS, KernelTrace, TracedLaunch

FIELDS = ("early", "gap", "work", "main", "tail", "share")


def launch_rows(launches: list[TracedLaunch]) -> list[dict]:
    """Per launch, in step order: its name and :data:`FIELDS` in microseconds (``gap`` and
    ``share`` None where there is no previous / next launch)."""
    rows = []
    for i, t in enumerate(launches):
        release = t.first("wait_done")
        prev_end = launches[i - 1].last("end") if i else None
        nxt = launches[i + 1].first("wait_done") if i + 1 < len(launches) else None
        rows.append({
            "name": t.name,
            "early": (release - t.first("start")) / 1e3,
            "gap": None if prev_end is None else (release - prev_end) / 1e3,
            "work": (t.last("end") - release) / 1e3,
            "main": (t.last("main_done") - release) / 1e3,
            "tail": (t.last("end") - t.last("main_done")) / 1e3,
            "share": None if nxt is None else (nxt - release) / 1e3,
        })
    return rows


def timer_step_ns(launches: list[TracedLaunch]) -> float:
    """The timer's granularity: the smallest difference between distinct marks."""
    values = np.unique(np.concatenate([t.times.numpy().ravel() for t in launches]))
    diffs = np.diff(values)
    return float(diffs[diffs > 0].min()) if diffs.size else float("nan")


def layer_programs(launches: list[TracedLaunch], n_layers: int, layer: int) -> list[dict]:
    """The launches of layer ``layer`` (a step's launches less the extra ones, split evenly
    over ``n_layers``) with every program's marks in microseconds from the layer's first
    release, for a closer look at one launch (which programs end last)."""
    per_layer = len(launches) // n_layers
    mine = launches[layer * per_layer:(layer + 1) * per_layer]
    t0 = mine[0].first("wait_done")
    return [{"name": t.name, "marks_us": ((t.times - t0) / 1e3).round(decimals=3).tolist()}
            for t in mine]


def spread_lines(programs: list[dict]) -> list[str]:
    """A table of the dumped layer: per launch, its programs and each mark's earliest /
    median / latest time (us from the layer's first release), to tell whether a launch's
    programs start, get past their wait and finish together."""
    lines = ["| launch | programs | " + " | ".join(f"{m} min / med / max" for m in MARKS) + " |",
             "|---|---|" + "---|" * len(MARKS)]
    for i, t in enumerate(programs):
        marks = np.asarray(t["marks_us"])
        cells = [f"{marks[:, j].min():.2f} / {np.median(marks[:, j]):.2f} / "
                 f"{marks[:, j].max():.2f}" for j in range(len(MARKS))]
        lines.append(f"| {i} `{t['name']}` | {len(marks)} | " + " | ".join(cells) + " |")
    return lines


@torch.no_grad()
def trace_step(variant: str, context: int, reps: int, batch: int = 1,
               dump_layer: int | None = None) -> dict:
    device = torch.device("cuda")
    model = build(variant, context, device)
    cfg = model.config
    cache, table, lens = random_paged_cache(cfg, batch, context, 64, torch.bfloat16, device)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    step = DecodeStep(model, cache, compile=False, fused=True)
    trace = KernelTrace(device)

    plain_ms = replay_ms(capture_step(step, ids, table, lens), 30)
    with trace.active():  # compiles the traced kernel forms before the capture
        step(ids, table, lens)
    traced = capture_step(step, ids, table, lens, capture_context=trace.active)
    traced_ms = replay_ms(traced, 30)
    per_role: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in FIELDS])
    order: list[str] = []
    step_us, granularity = [], []
    for _ in range(reps):
        traced.replay()
        torch.cuda.synchronize()
        launches = trace.launches()
        rows = launch_rows(launches)
        granularity.append(timer_step_ns(launches))
        step_us.append((launches[-1].last("end") - launches[0].first("start")) / 1e3)
        for role, row in zip(roles([r["name"] for r in rows], cfg.n_layers), rows, strict=True):
            if role not in per_role:
                order.append(role)
            for j, f in enumerate(FIELDS):
                if row[f] is not None:
                    per_role[role][j].append(row[f])
    table_rows = [{"role": r, "per_step": len(per_role[r][0]) / reps,
                   **{f: float(np.mean(v)) if v else None
                      for f, v in zip(FIELDS, per_role[r], strict=True)}} for r in order]
    programs = None if dump_layer is None else layer_programs(launches, cfg.n_layers, dump_layer)
    return {"variant": variant, "context": context, "batch": batch, "layer_programs": programs,
            "step_ms_untraced": plain_ms, "step_ms_traced": traced_ms,
            "traced_span_us": float(np.median(step_us)),
            "timer_granularity_ns": float(np.min(granularity)),
            "launches_per_step": len(launches), "roles": table_rows}


def format_result(r: dict) -> list[str]:
    lines = [f"## {r['variant']}, batch {r['batch']} x {r['context']}: step "
             f"{r['step_ms_untraced']:.3f} ms untraced, {r['step_ms_traced']:.3f} traced; "
             f"{r['launches_per_step']} traced launches spanning {r['traced_span_us']:.1f} us; "
             f"timer granularity {r['timer_granularity_ns']:.0f} ns", "",
             "| launch | per step | " + " | ".join(f"{f} us" for f in FIELDS) + " |",
             "|---|---|" + "---|" * len(FIELDS)]
    for q in r["roles"]:
        cells = ["" if q[f] is None else f"{q[f]:.2f}" for f in FIELDS]
        lines.append(f"| `{q['role']}` | {q['per_step']:.0f} | " + " | ".join(cells) + " |")
    sums = {f: sum((q[f] or 0.0) * q["per_step"] for q in r["roles"]) for f in ("gap", "work")}
    lines += ["", f"per step: gaps {sums['gap']:.1f} us, work {sums['work']:.1f} us "
              "(work counts overlapping launches once each)", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="mlra_4")
    p.add_argument("--contexts", default="8192")
    p.add_argument("--reps", type=int, default=10, help="replays whose marks are averaged")
    p.add_argument("--dump-layer", type=int, default=None,
                   help="also save every program's marks of this layer (last replay) in the json")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    results, lines = [], [f"# Decode step traces, {torch.cuda.get_device_name()}", "",
                          f"torch {torch.__version__}; `{' '.join(['python', *sys.argv])}`", ""]
    for variant in args.variants.split(","):
        for context in (int(c) for c in args.contexts.split(",")):
            r = trace_step(variant, context, args.reps, dump_layer=args.dump_layer)
            results.append(r)
            shown = format_result(r)
            if r["layer_programs"]:
                shown += ["", f"layer {args.dump_layer}, every program's marks:", "",
                          *spread_lines(r["layer_programs"])]
            lines += shown
            print("\n".join(shown), flush=True)
            torch.cuda.empty_cache()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trace.md").write_text("\n".join(lines) + "\n")
        (out / "trace.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
