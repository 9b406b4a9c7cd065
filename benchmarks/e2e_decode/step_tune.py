"""Tunes one-row projection parameters inside the decode step they run in, not alone.

``bench_skinny.py`` times 20 launches of one shape back to back: each launch's programme tail
is filled by the next one's, so wave quantisation and start-up latency barely show. In a
step, every projection waits for the kernel before it and the next waits for it. This script
builds the paper-size model once, then for each candidate (the tuned table with one shape's
entry replaced) captures the batch-1 fused step in a CUDA graph and times it beside the
table in use, interleaved, several rounds.

    PYTHONPATH=src python benchmarks/e2e_decode/step_tune.py --variant mlra_4 --out DIR

``--registers`` (no GPU): each candidate's registers and spills, compiled for sm_90 on the CPU
as a batch-1 launch on an H200 specialises it -- a triage before spending GPU time on it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from mlra.kernels.triton_skinny import (
    TUNED_ENV,
    default_skinny_config,
    prefetch_lines,
    split_plan,
    table_entry,
    tuning_key,
)

sys.path.insert(0, str(Path(__file__).parent))
from env_sweep import interleaved_step_ms, save, step_parser  # noqa: E402

TABLE = Path(__file__).parents[2] / "src" / "mlra" / "kernels" / "skinny_tuned.json"

# shape key (one row): candidate entries (the tuned table's entry replaced by each)
CANDIDATES: dict[str, list[dict]] = {
    tuning_key(1, 9880, [3072], False): [  # down + residual (MLRA-4 / MLA / GQA at 2.9B)
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, split_k=2),
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, split_k=1),
        dict(block_n=16, block_k=512, lane_sums=True, num_stages=3, split_k=3),
        dict(block_n=16, block_k=512, lane_sums=False, num_stages=3, split_k=2),
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=1, split_k=1),
        dict(block_n=8, block_k=1024, lane_sums=False, num_stages=1, split_k=2),
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, split_k=3, num_warps=8),
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=4, split_k=2),
        dict(block_n=16, block_k=256, lane_sums=False, num_stages=3, waves=2),
        dict(block_n=16, block_k=512, lane_sums=False, num_stages=4, split_k=2),
    ],
    tuning_key(1, 3072, [9880, 9880], True): [  # gate/up SwiGLU
        dict(block_n=8, block_k=256, lane_sums=False, num_stages=3, waves=2),
        dict(block_n=32, block_k=256, lane_sums=False, num_stages=3, waves=2),
        dict(block_n=16, block_k=256, lane_sums=False, num_stages=4, waves=2),
        dict(block_n=8, block_k=1024, lane_sums=False, num_stages=1, waves=2),
    ],
    tuning_key(1, 3072, [1024, 576], False): [  # norm + q/kv down (MLRA-4 / MLA)
        # the entry in use, letting the query up-projection launch (and prefetch) early
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=4, early_next=True),
        dict(block_n=4, block_k=2048, lane_sums=True, num_stages=1, waves=4),
        dict(block_n=2, block_k=4096, lane_sums=True, num_stages=1, waves=4),
        # the entry in use before merge_up call 6 (now 4 x 4096, reduced per tile)
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=1, waves=4),
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=1, split_k=3),
        dict(block_n=8, block_k=1024, lane_sums=True, num_stages=1, split_k=3),
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=1, waves=4, num_warps=8),
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, waves=4),
    ],
    tuning_key(1, 3072, [1536, 576], False): [  # norm + q/kv down (MLA: q rank 1536)
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=4, early_next=True),
        # no entry of its own: MLRA-4's (4 x 4096, waves 4) is the nearest and runs now
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=2),
        dict(block_n=8, block_k=4096, lane_sums=False, num_stages=1, waves=2),
        dict(block_n=2, block_k=4096, lane_sums=False, num_stages=1, waves=4),
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=2, waves=4),
    ],
    tuning_key(1, 1024, [4608], False): [  # query norm + q up (MLRA-4)
        dict(block_n=8, block_k=1024, lane_sums=True, num_stages=1, waves=2, early_next=True),
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=1, waves=2),
        dict(block_n=16, block_k=1024, lane_sums=True, num_stages=1, waves=2),
        dict(block_n=8, block_k=1024, lane_sums=True, num_stages=1, waves=2, num_warps=8),
        dict(block_n=8, block_k=1024, lane_sums=False, num_stages=1, waves=2),
    ],
    tuning_key(1, 1536, [4608], False): [  # query norm + q up (MLA: q rank 1536)
        dict(block_n=8, block_k=2048, lane_sums=False, num_stages=1, waves=2, early_next=True),
        dict(block_n=4, block_k=2048, lane_sums=False, num_stages=1, waves=4),
        dict(block_n=4, block_k=2048, lane_sums=False, num_stages=1, waves=2),
        # what ran before the ninth session: no entry, the generic default (32 x 256 tiles)
        dict(),
        dict(block_n=8, block_k=1024, lane_sums=True, num_stages=1, waves=2),
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, waves=2),
    ],
    tuning_key(1, 3072, [3072], False): [  # wo + residual
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, split_k=2),
        dict(block_n=4, block_k=1024, lane_sums=True, num_stages=1, waves=2),
        dict(block_n=8, block_k=1024, lane_sums=False, num_stages=1, split_k=2),
        # all of K in one tile, as the q/kv down projection's kept entry (merge_up call 6)
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=4),
        dict(block_n=2, block_k=4096, lane_sums=False, num_stages=1, waves=4),
        # the entry in use before the ninth session (now 4 x 4096, waves 2)
        dict(block_n=8, block_k=512, lane_sums=True, num_stages=3, waves=1),
    ],
    tuning_key(1, 3072, [3072, 768, 768], False): [  # norm + q/k/v (GQA)
        dict(block_n=4, block_k=1024, lane_sums=False, num_stages=1, waves=2, early_next=True),
        # the entry in use loads three 1024-wide tiles one after another (one stage)
        dict(block_n=4, block_k=1024, lane_sums=False, num_stages=2, waves=2),
        dict(block_n=8, block_k=1024, lane_sums=False, num_stages=2, waves=2),
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=4),
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=2),
        dict(block_n=2, block_k=4096, lane_sums=False, num_stages=1, waves=2),
    ],
    tuning_key(1, 3072, [50304], False): [  # final norm + head (every variant)
        dict(block_n=4, block_k=4096, lane_sums=False, num_stages=1, waves=2),
        dict(block_n=2, block_k=4096, lane_sums=False, num_stages=1, waves=2),
        # the entry in use before the ninth session (now with two stages)
        dict(block_n=8, block_k=1024, lane_sums=False, num_stages=1, waves=2),
    ],
}


def candidate_registers(keys: list[str], device_name: str = "NVIDIA H200", sms: int = 132
                        ) -> list[str]:
    """Markdown rows: registers and spill bytes of the entry in use for ``device_name`` and
    of each candidate of ``keys``, the one-row projection kernel compiled for sm_90 on the CPU
    with the split-K factor and prefetch the launcher picks on ``sms`` multiprocessors."""
    sys.path.insert(0, str(Path(__file__).parents[2] / "tests"))
    from bench_skinny import SHAPES
    from pdl_ptx import skinny_types

    from mlra.kernels.aot import compile_sm90, ptxas_usage
    from mlra.kernels.triton_skinny import _skinny_kernel

    in_use = json.loads(TABLE.read_text()).get(device_name, {})
    params = list(inspect.signature(_skinny_kernel.fn).parameters)
    types = skinny_types()
    aligned = [p for p in params if types.get(p, "").startswith("*")]
    lines = ["| shape | entry | registers | spill stores / loads (bytes) |", "|---|---|---|---|"]
    for key in keys:
        _, k, n, kind = key.split(":")
        K, ns, swiglu = int(k[1:]), [int(v) for v in n[1:].split("x")], kind == "swiglu"
        norm, res = next((norm, res) for K_, ns_, norm, res, sw in SHAPES.values()
                         if (K_, list(ns_), sw) == (K, ns, swiglu))
        for label, entry in [("in use", table_entry(in_use, 1, K, ns, swiglu) or {}),
                             *((f"#{i}", c) for i, c in enumerate(CANDIDATES.get(key, [])))]:
            cfg = dataclasses.replace(default_skinny_config(1, K), **entry)
            tiles = sum(-(-v // cfg.block_n) for v in (ns[:1] if swiglu else ns))
            split, k_split = split_plan(K, cfg.block_k, tiles, sms, cfg.waves, cfg.split_k)
            consts = dict(NUM_W=1 if swiglu else len(ns), SWIGLU=swiglu, HAS_NORM=norm,
                          HAS_RES=res, SPLIT_K=split, K_SPLIT=k_split,
                          NUM_STAGES=cfg.num_stages, BLOCK_M=1, BLOCK_N=cfg.block_n,
                          BLOCK_K=cfg.block_k, ALIGNED=K % 8 == 0, PDL=2,
                          PF_LINES=prefetch_lines(k_split, cfg.block_n, tiles * split, sms, 2,
                                                  2 if swiglu else 1),
                          LINE=64, LANE_SUMS=bool(cfg.lane_sums),
                          EARLY_NEXT=bool(cfg.early_next))
            compiled = compile_sm90(_skinny_kernel, types, consts, aligned,
                                    num_warps=cfg.num_warps, launch_pdl=True)
            u = ptxas_usage(compiled.asm["ptx"])
            lines.append(f"| `{key}` | {label} {entry} | {u['registers']} | "
                         f"{u['spill_stores']} / {u['spill_loads']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = step_parser(__doc__.splitlines()[0])
    p.add_argument("--shapes", default=None, help="keys of CANDIDATES (default: all)")
    p.add_argument("--setting", default=None,
                   help="only the candidates that set this field (e.g. early_next)")
    p.add_argument("--registers", action="store_true",
                   help="print each candidate's sm_90 registers and spills (CPU, no timing)")
    args = p.parse_args(argv)
    shapes = args.shapes.split(",") if args.shapes else list(CANDIDATES)
    if args.registers:
        os.environ.pop("TRITON_INTERPRET", None)
        print("\n".join(candidate_registers(shapes)), flush=True)
        return 0
    name = torch.cuda.get_device_name()
    base = json.loads(TABLE.read_text())
    tmp = Path(tempfile.mkdtemp())
    tables = {"in use": {TUNED_ENV: str(TABLE)}}
    for key in shapes:
        for i, cand in enumerate(CANDIDATES[key]):
            if args.setting and args.setting not in cand:
                continue
            t = json.loads(json.dumps(base))
            t.setdefault(name, {})[key] = cand
            path = tmp / f"{len(tables)}.json"
            path.write_text(json.dumps(t))
            tables[f"{key} #{i} {cand}"] = {TUNED_ENV: str(path)}
    times = interleaved_step_ms(args.variant, args.context, tables, args.rounds, args.reps)
    ref = statistics.median(times["in use"])
    lines = [f"# Projection parameters in the {args.variant} batch-1 step at {args.context}, "
             f"{name}", "", f"`{' '.join(['python', *sys.argv])}`; median of {args.rounds} "
             f"rounds of {args.reps} replays", "", "| candidate | step ms | vs in use |",
             "|---|---|---|"]
    for label in tables:
        t = statistics.median(times[label])
        lines.append(f"| {label} | {t:.3f} | {t / ref:.3f} |")
    save(args.out, "step_tune", lines, times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
