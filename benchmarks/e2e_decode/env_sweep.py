"""Times the fused batch-1 decode step under several launch-parameter environments, side by
side in one process (interleaved rounds), for kernels tuned through environment variables
(``MLRA_MERGE_CONFIG``, ``MLRA_LATENT_CONFIG``, ``MLRA_MLP_CONFIG``, ...).

Each candidate is a label and the variables it sets; every round captures the step afresh
under each candidate (the launch parameters are read when the step is captured) and times
its replays. The first candidate is the reference of the ratio column.

    PYTHONPATH=src python benchmarks/e2e_decode/env_sweep.py --variant mlra_4 \\
        --candidates '{"default": {}, "merge 32": {"MLRA_MERGE_CONFIG": "{\\"block_d\\": 32}"}}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from mlra.bench.paged import random_paged_cache
from mlra.bench.timing import env_vars
from mlra.decoding import DecodeStep

sys.path.insert(0, str(Path(__file__).parent))
from profile_step import build, capture_step, replay_ms  # noqa: E402


def parse_candidates(text: str) -> dict[str, dict[str, str]]:
    """``{label: {VARIABLE: value}}`` from JSON (a value that is not a string is written as
    JSON, so ``{"MLRA_MERGE_CONFIG": {"block_d": 32}}`` works too)."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or not raw:
        raise SystemExit("--candidates: a non-empty JSON object {label: {VARIABLE: value}}")
    return {label: {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
            for label, env in raw.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="mlra_4")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", required=True, help="JSON {label: {VARIABLE: value}}")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    candidates = parse_candidates(args.candidates)
    device = torch.device("cuda")
    model = build(args.variant, args.context, device)
    cache, table, lens = random_paged_cache(model.config, 1, args.context, 64, torch.bfloat16,
                                            device)
    ids = torch.randint(0, model.config.vocab_size, (1, 1), device=device)
    times: dict[str, list[float]] = {label: [] for label in candidates}
    with torch.no_grad():
        for _ in range(args.rounds):
            for label, env in candidates.items():
                with env_vars(env):
                    graph = capture_step(DecodeStep(model, cache, fused=True), ids, table, lens)
                    times[label].append(replay_ms(graph, args.reps))
                del graph
    ref = statistics.median(next(iter(times.values())))
    lines = [f"# {args.variant} batch-1 step at {args.context}, "
             f"{torch.cuda.get_device_name(device)}", "",
             f"median of {args.rounds} interleaved rounds of {args.reps} replays", "",
             "| candidate | environment | step ms | rounds | vs first |", "|---|---|---|---|---|"]
    for label, env in candidates.items():
        t = statistics.median(times[label])
        rounds = " ".join(f"{v:.3f}" for v in times[label])
        lines.append(f"| {label} | `{json.dumps(env)}` | {t:.3f} | {rounds} | {t / ref:.3f} |")
    print("\n".join(lines), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "env_sweep.md").write_text("\n".join(lines) + "\n")
        (out / "env_sweep.json").write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
