"""Where a decode call's fixed cost goes (issue 12): the time a call takes beyond its bytes.

For each (shape, length) of ``mlra bench decode`` this prints, in one run:

- the call's median time under three L2 conditions before each call: ``write`` (the L2 flush
  of ``mlra bench decode``: a 256 MB buffer zeroed, leaving the L2 full of *dirty* lines that
  must be written back while the timed call runs), ``read`` (the same buffer summed: the L2
  holds clean lines of it, nothing to write back) and ``none`` (no flush; the cache may hit
  in L2 for short contexts);
- the event overhead of an empty call and of one tiny kernel (the timing floor);
- a ``torch.profiler`` split of the call (``read`` flush): the main kernel's duration, the gap
  to the split merge, the merge's duration, and the span from the first kernel's start to the
  last kernel's end;
- the call's time for a few split counts beside the default one.

    PYTHONPATH=src python benchmarks/decode/fixed_cost.py --out DIR

Needs a CUDA GPU; writes ``fixed_cost.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from mlra.bench.decode import (
    PAPER_SHAPES,
    SHAPES,
    build_inputs,
    fmt_size,
    io_bytes,
    parse_size,
    triton_call,
)
from mlra.bench.timing import copy_bandwidth, flush_l2, l2_flush_buffer, time_cuda

POINTS = (
    "mla:128K,mla:1M,mlra4_tp4:128K,mlra4_tp4:1M,gqa_tp8:128K,gqa_tp8:1M,gla2_tp2:1M,mlra2_tp2:1M"
)


def timed(fn: Callable[[], object], flush: torch.Tensor, mode: str, reps: int) -> float:
    """Median device time (us) of ``fn`` by :func:`mlra.bench.timing.time_cuda`, the L2
    flushed by reading or writing ``flush`` before each call, or (``none``) not at all."""
    buf = None if mode == "none" else flush
    return time_cuda(fn, reps=reps, warmup=3, flush=buf,
                     flush_mode="read" if buf is None else mode).median_us


def profile_split(fn: Callable[[], object], flush: torch.Tensor, reps: int,
                  marker: str = "reduce") -> dict:
    """Kernel durations inside the call, from a profiler trace of ``reps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush_l2(flush, "read")
            torch.cuda._sleep(1_000_000)
            fn()
        torch.cuda.synchronize()
    kernels = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
         and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()),
        key=lambda e: e.time_range.start)
    calls: list[list] = []
    current: list | None = None
    for e in kernels:
        if "spin" in e.name.lower() or "sleep" in e.name.lower():
            current = []
            calls.append(current)
        elif marker in e.name.lower():
            current = None  # the flush: not part of a call
        elif current is not None:
            current.append(e)
    calls = [c for c in calls if c]
    if not calls:
        return {"error": "no kernels recorded"}
    names = [e.name for e in calls[0]]
    per_kernel = []
    for k, name in enumerate(names):
        durs = [c[k].time_range.elapsed_us() for c in calls if len(c) > k]
        per_kernel.append({"name": name[:60], "us": round(statistics.median(durs), 2)})
    gaps = []
    for k in range(1, len(names)):
        g = [c[k].time_range.start - c[k - 1].time_range.end for c in calls if len(c) > k]
        gaps.append(round(statistics.median(g), 2))
    spans = [c[-1].time_range.end - c[0].time_range.start for c in calls]
    return {"kernels": per_kernel, "gaps_us": gaps, "span_us": round(statistics.median(spans), 2),
            "calls": len(calls)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default=POINTS, help="shape:length,... (default: %(default)s)")
    ap.add_argument("--splits", default="0.5,2", help="split counts as multiples of the default")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    copy_bw = copy_bandwidth("cuda")
    buf = l2_flush_buffer("cuda")
    tiny = torch.zeros(1, device="cuda")
    floor = {"empty_us": timed(lambda: None, buf, "read", args.reps),
             "tiny_kernel_us": timed(lambda: tiny.add_(1), buf, "read", args.reps)}
    print(f"copy {copy_bw / 1e9:.0f} GB/s; event floor: empty {floor['empty_us']:.2f} us, "
          f"one tiny kernel {floor['tiny_kernel_us']:.2f} us")
    rows = []
    for point in args.points.split(","):
        name, length_text = point.split(":")
        shape, length = {**SHAPES, **PAPER_SHAPES}[name], parse_size(length_text)
        inputs = build_inputs(shape, 1, length, "cuda", seed=length)
        fn = triton_call(shape, inputs, length)
        nbytes = io_bytes(shape, 1, length)
        row: dict = {"shape": name, "length": length, "bytes": nbytes,
                     "floor_us": round(nbytes / copy_bw * 1e6, 2)}
        for mode in ("write", "read", "none"):
            row[f"{mode}_us"] = round(timed(fn, buf, mode, args.reps), 2)
        row["profile"] = profile_split(fn, buf, 10)
        sweep = {}
        mults = [float(m) for m in args.splits.split(",") if m]
        default = _default_splits(fn) if mults else None
        for mult in mults if default else []:
            s = max(1, round(default * mult))
            f = triton_call(shape, inputs, length, num_splits=s)
            sweep[s] = round(timed(f, buf, "read", args.reps), 2)
        row["splits_read_us"] = sweep
        rows.append(row)
        p = row["profile"]
        ks = " + ".join(f"{k['us']:.1f}" for k in p.get("kernels", []))
        print(f"{name:10s} {fmt_size(length):>5s} floor {row['floor_us']:6.1f} | write "
              f"{row['write_us']:6.1f} read {row['read_us']:6.1f} none {row['none_us']:6.1f} | "
              f"kernels {ks} gaps {p.get('gaps_us')} span {p.get('span_us')} | splits {sweep}")
        for k in p.get("kernels", []):
            print(f"    {k['us']:8.2f} us  {k['name']}")
        del inputs, fn
        torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(), "copy_gbps": round(copy_bw / 1e9, 1),
              "floor": floor, "rows": rows}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fixed_cost.json").write_text(json.dumps(result, indent=1))
    return 0


def _default_splits(fn: Callable[[], object]) -> int | None:
    """The split count the default call used (from its workspace: the merge reads it)."""
    from mlra.kernels import _triton_common as common

    seen: list[int] = []
    original = common.split_workspaces

    def spy(num_splits, *rest):
        seen.append(num_splits)
        return original(num_splits, *rest)

    mods = [m for m in list(sys.modules.values())
            if m is not None and getattr(m, "split_workspaces", None) is original]
    for m in mods:
        m.split_workspaces = spy
    try:
        fn()
    finally:
        for m in mods:
            m.split_workspaces = original
    return seen[0] if seen else None


if __name__ == "__main__":
    sys.exit(main())
