"""Warp-stall samples of ``ncu``'s source page, summed per phase of a kernel.

Reads the CSV of ``ncu -i REPORT --page source --csv --print-source sass`` (one or more
kernels, each starting with a ``"Kernel Name"`` row) and prints, for each kernel, the stall
samples of the instructions between phase markers: a phase starts at the first instruction
(after the previous marker) whose SASS contains the marker's text. The default markers fit
the resident projection (``mlra.kernels.gluon_skinny``): ``ACQBULK`` (the PDL wait),
``LDG`` (reading ``x``), ``LDS.128`` (the products), ``STG`` (the store)::

    python ncu_stalls.py sass.csv --names "q/kv down,q up,output"
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys

DEFAULT_PHASES = "postwait=ACQBULK,x=LDG,products=LDS.128,store=STG"


def phase_stalls(rows: list[list[str]], phases: list[tuple[str, str]]
                 ) -> list[dict[str, collections.Counter]]:
    """Per kernel in ``rows`` (the CSV), per phase (``pre`` before the first marker), the
    stall samples by reason."""
    starts = [i for i, r in enumerate(rows) if r and r[0] == "Kernel Name"]
    kernels = []
    for n, s in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(rows)
        header = rows[s + 1]
        col = {h: i for i, h in enumerate(header)}
        reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
        current, todo = "pre", list(phases)
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for r in rows[s + 2:end]:
            if len(r) != len(header):
                continue
            if todo and todo[0][1] in r[col["Source"]]:
                current = todo.pop(0)[0]
            for reason in reasons:
                counts[current][reason[len("stall_"):]] += int(r[col[reason]] or 0)
        kernels.append(counts)
    return kernels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("--phases", default=DEFAULT_PHASES, help="name=SASS text,... in order")
    p.add_argument("--names", default="", help="kernel labels, comma-separated")
    p.add_argument("--top", type=int, default=6)
    args = p.parse_args(argv)
    try:
        with open(args.csv, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        print(f"cannot read {args.csv}: {exc}", file=sys.stderr)
        return 2
    phases = [tuple(x.split("=", 1)) for x in args.phases.split(",")]
    if not all(len(ph) == 2 for ph in phases):
        print(f"--phases: expected name=text pairs, got {args.phases!r}", file=sys.stderr)
        return 2
    names = [x for x in args.names.split(",") if x]
    kernels = phase_stalls(rows, phases)
    if not kernels:
        print(f"{args.csv}: no 'Kernel Name' rows (not ncu's source page as CSV?)",
              file=sys.stderr)
        return 2
    for n, counts in enumerate(kernels):
        total = sum(sum(c.values()) for c in counts.values())
        print(f"== {names[n] if n < len(names) else f'kernel {n}'}: {total} samples")
        for phase, c in counts.items():
            top = ", ".join(f"{k} {v}" for k, v in c.most_common(args.top) if v)
            print(f"  {phase:9s} {sum(c.values()):6d}: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
