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


def interleaved_step_ms(variant: str, context: int, candidates: dict[str, dict[str, str]],
                        rounds: int, reps: int) -> dict[str, list[float]]:
    """Per candidate, the fused batch-1 step's milliseconds in each of ``rounds`` rounds: the
    paper-size ``variant`` over ``context`` cached tokens, every round capturing the step
    afresh under each candidate's environment and timing ``reps`` replays."""
    device = torch.device("cuda")
    model = build(variant, context, device)
    cache, table, lens = random_paged_cache(model.config, 1, context, 64, torch.bfloat16, device)
    ids = torch.randint(0, model.config.vocab_size, (1, 1), device=device)
    times: dict[str, list[float]] = {label: [] for label in candidates}
    with torch.no_grad():
        for _ in range(rounds):
            for label, env in candidates.items():
                with env_vars(env):
                    graph = capture_step(DecodeStep(model, cache, fused=True), ids, table, lens)
                    times[label].append(replay_ms(graph, reps))
                del graph
    return times


def save(out: str | None, stem: str, lines: list[str], times: dict[str, list[float]]) -> None:
    """Print the report; with ``out``, also write it (``STEM.md``) and every round's time
    (``STEM.json``) there."""
    print("\n".join(lines), flush=True)
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{stem}.md").write_text("\n".join(lines) + "\n")
        (path / f"{stem}.json").write_text(json.dumps(times, indent=1))


def step_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of an in-step comparison: variant, context, replays, rounds, output."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--variant", default="mlra_4")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    p = step_parser(__doc__.splitlines()[0])
    p.add_argument("--candidates", required=True, help="JSON {label: {VARIABLE: value}}")
    args = p.parse_args(argv)
    candidates = parse_candidates(args.candidates)
    times = interleaved_step_ms(args.variant, args.context, candidates, args.rounds, args.reps)
    ref = statistics.median(next(iter(times.values())))
    lines = [f"# {args.variant} batch-1 step at {args.context}, "
             f"{torch.cuda.get_device_name()}", "",
             f"median of {args.rounds} interleaved rounds of {args.reps} replays", "",
             "| candidate | environment | step ms | rounds | vs first |", "|---|---|---|---|---|"]
    for label, env in candidates.items():
        t = statistics.median(times[label])
        rounds = " ".join(f"{v:.3f}" for v in times[label])
        lines.append(f"| {label} | `{json.dumps(env)}` | {t:.3f} | {rounds} | {t / ref:.3f} |")
    save(args.out, "env_sweep", lines, times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
