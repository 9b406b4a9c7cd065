"""Does an L2 lookahead land? The output projection and the MLP of one paper-size layer
(MLRA-4 shapes), each timed alone after the L2 was flushed, with nothing, a lookahead (bulk or
line prefetches) or a plain read of its weights issued before a pause of ``--pause-us``
(the latency-bound attention kernels of a step), optionally with ``--between-mb`` of other
reads in the pause (the attention's cache).

    PYTHONPATH=src python benchmarks/e2e_decode/lookahead_probe.py --out DIR

Needs a Hopper GPU. Prints a table of median microseconds and writes ``lookahead_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from mlra import kernels
from mlra.bench.timing import flush_l2, l2_flush_buffer
from mlra.kernels import lookahead
from mlra.kernels.triton_lookahead import lookahead_triton


def timed(run: Callable[[], object], before: Callable[[], object], flush: torch.Tensor,
          pause_cycles: int, reps: int) -> float:
    """Median microseconds of ``run`` alone, each rep after an L2 flush, ``before`` and a
    pause."""
    times = []
    for i in range(reps + 3):
        flush_l2(flush, "read")
        before()
        torch.cuda._sleep(pause_cycles)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=3072)
    p.add_argument("--hidden", type=int, default=9880)
    p.add_argument("--pause-us", type=float, default=15.0)
    p.add_argument("--between-mb", default="0,10")
    p.add_argument("--mlp-mb", type=float, default=24.0)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    d, h = args.d_model, args.hidden
    bf = dict(dtype=torch.bfloat16, device=dev)
    x = torch.randn(1, d, **bf)
    wo = torch.randn(d, d, **bf) / d**0.5
    g, u = torch.randn(h, d, **bf) / d**0.5, torch.randn(h, d, **bf) / d**0.5
    dn = (torch.randn(d, h, **bf) / h**0.5).t().contiguous().t()  # column-major
    norm = torch.ones(d, **bf)
    flush = l2_flush_buffer(dev)
    cycles = int(args.pause_us * torch.cuda.get_device_properties(dev).clock_rate * 1e-3)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    mlp_spans = lookahead.mlp_spans_within(g, u, dn, sms, int(args.mlp_mb * (1 << 20)))
    targets = {
        "wo": (lambda: kernels.skinny_linear(x, [wo], residual=x), [lookahead.whole(wo)],
               lambda: wo.sum()),
        "mlp": (lambda: kernels.swiglu_mlp(x, norm, 1e-6, g, u, dn, residual=x), mlp_spans,
                None),
    }
    rows = []
    for between_mb in (float(v) for v in args.between_mb.split(",")):
        other = torch.empty(max(1, int(between_mb * (1 << 20)) // 2), **bf)
        for name, (run, spans, read) in targets.items():
            spans = [s.aligned() for s in spans]

            def with_other(action, between_mb=between_mb, other=other):
                def go():
                    action()
                    if between_mb:
                        other.sum()
                return go

            cases = {
                "nothing": with_other(lambda: None),
                "bulk": with_other(lambda spans=spans: lookahead_triton(spans, x)),
                "lines": with_other(lambda spans=spans: lookahead_triton(spans, x, lines=True)),
            }
            if read is not None:
                cases["plain read"] = with_other(read)
            row = {"target": name, "between_mb": between_mb,
                   "prefetch_mb": sum(s.nbytes for s in spans) / (1 << 20)}
            for case, before in cases.items():
                row[case] = timed(run, before, flush, cycles, args.reps)
            rows.append(row)
            print(f"{name} (lookahead {row['prefetch_mb']:.1f} MB, {between_mb:g} MB read "
                  "between): " + ", ".join(f"{c} {row[c]:.2f} us" for c in cases), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lookahead_probe.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(dev), "pause_us": args.pause_us,
             "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
