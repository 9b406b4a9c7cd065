"""What drives the perplexity gap between the latent family and MHA/GQA in ``mlra compare``'s
tiny table: many short trainings of the compare recipe, varied one knob at a time.

    python benchmarks/quality/study_tiny.py --procs 8 --threads 2 \
        --results benchmarks/quality/results/study_tiny

Groups (every run is ``mlra compare``'s recipe -- tiny preset, built-in corpus, 400 steps of
8 x 128 tokens, lr 1e-3, 20 warm-up steps -- with one knob changed):

- ``seeds``: the recipe itself, all six variants, ``--seeds`` seeds;
- ``lr``: peak learning rate x0.5, x2, x4 for MHA, GQA, MLA, MLRA-4 (x1 is ``seeds``);
- ``long``: 3x the steps (same schedule shape) for GQA, MLA, MLRA-4;
- ``ablation``: ``latent_scaling=False`` and ``zero_init_output=False`` for MLA and MLRA-4;
- ``long_lr``: 3x the steps at 2x the learning rate for GQA, MLA, MLRA-4.

Runs go to ``--runs/<name>``; they are trained in ``--procs`` processes with ``--threads`` torch
threads each: the seeds of the default recipe first, then the other groups seed round by seed
round (a cut-short study still fills every cell). After
each run ``RESULTS.json`` and ``RESULTS.md`` are rewritten; a run already in ``RESULTS.json``
with the same settings is skipped, so the study resumes where it stopped. ``--deadline-s``
starts no run that would not finish in time (estimated from the runs so far).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mlra.atomic import atomic_write_text
from mlra.data.sources import resolve_data
from mlra.train.compare import DEFAULT_VARIANTS, CompareConfig
from mlra.train.config import PRESENTATION_ONLY, TrainConfig
from mlra.train.seed_stats import noise_verdict, summarize

LR_SCALES = (0.5, 2.0, 4.0)
LR_VARIANTS = ("mha", "gqa", "mla", "mlra_4")
LONG_VARIANTS = ("gqa", "mla", "mlra_4")
ABLATION_VARIANTS = ("mla", "mlra_4")
ABLATIONS = ("latent_scaling", "zero_init_output")
GROUPS = ("seeds", "lr", "long", "ablation", "long_lr")


@dataclass(frozen=True)
class Recipe:
    """One setting of the knobs, relative to the compare recipe."""

    label: str
    lr_scale: float = 1.0
    steps_scale: int = 1
    overrides: tuple[tuple[str, Any], ...] = ()


DEFAULT = Recipe("default")


@dataclass(frozen=True)
class Spec:
    """One training run of the study."""

    variant: str
    recipe: Recipe
    seed_index: int
    groups: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        return f"{self.variant}.{self.recipe.label}.s{self.seed_index}"


def recipes(group: str) -> tuple[tuple[str, ...], tuple[Recipe, ...]]:
    """(variants, recipes) of a group; every group but ``seeds`` also shows the default."""
    if group == "seeds":
        return DEFAULT_VARIANTS, (DEFAULT,)
    if group == "lr":
        return LR_VARIANTS, tuple(Recipe(f"lr_x{s:g}", lr_scale=s) for s in LR_SCALES)
    if group == "long":
        return LONG_VARIANTS, (Recipe("steps_x3", steps_scale=3),)
    if group == "long_lr":
        return LONG_VARIANTS, (Recipe("steps_x3", steps_scale=3),
                               Recipe("steps_x3_lr_x2", lr_scale=2.0, steps_scale=3))
    if group == "ablation":
        return ABLATION_VARIANTS, tuple(Recipe(f"{k}_off", overrides=((k, False),))
                                        for k in ABLATIONS)
    raise ValueError(group)


def plan(groups: list[str], seeds: int, sweep_seeds: int) -> list[Spec]:
    """Every run, in the order to train them: seed round by seed round, groups in the given
    order, longest first within a round."""
    specs: dict[str, Spec] = {}
    for group in groups:
        variants, recs = recipes(group)
        n = seeds if group == "seeds" else sweep_seeds
        for rec in (DEFAULT, *recs):
            for v in variants:
                for i in range(n):
                    spec = Spec(v, rec, i)
                    old = specs.get(spec.name)
                    specs[spec.name] = replace(spec, groups=(old.groups if old else ()) + (group,))
    order = {g: k for k, g in enumerate(groups)}
    return sorted(specs.values(), key=lambda s: (s.groups[0] != "seeds", s.seed_index,
                                                 -s.recipe.steps_scale, order[s.groups[0]],
                                                 s.name))


def train_config(spec: Spec, args: argparse.Namespace) -> TrainConfig:
    """The compare recipe of ``spec.variant`` with the spec's knobs turned."""
    cc = CompareConfig(steps=args.steps, eval_interval=args.eval_interval,
                       val_tokens=args.val_tokens, progress=False, device=args.device)
    base = cc.train_config(spec.variant, cc.seed + spec.seed_index)
    steps = base.steps * spec.recipe.steps_scale
    return replace(
        base, out=str(Path(args.runs) / spec.name), steps=steps, ckpt_interval=steps,
        lr=base.peak_lr * spec.recipe.lr_scale, model_overrides=dict(spec.recipe.overrides),
        eval_interval=base.eval_interval * spec.recipe.steps_scale,
        log_interval=max(1, steps // 40), dtype="fp32",
    )


def _settings(tcfg: TrainConfig) -> dict[str, Any]:
    plain = json.loads(json.dumps(tcfg.to_dict()))
    return {k: v for k, v in plain.items() if k not in PRESENTATION_ONLY}


def train_one(spec: Spec, tcfg: TrainConfig, threads: int) -> dict[str, Any]:
    """Train one run (in a worker process) and return its record."""
    from mlra.train.trainer import train

    torch.set_num_threads(threads)
    t0 = time.time()
    result = train(tcfg, overwrite=True, log=lambda msg: None)
    return {
        "name": spec.name, "variant": spec.variant, "recipe": spec.recipe.label,
        "groups": list(spec.groups), "seed": tcfg.seed, "settings": _settings(tcfg),
        "params": result.params, "val_loss": result.final_val_loss,
        "val_ppl": math.exp(result.final_val_loss), "val_curve": result.val_curve,
        "train_seconds": result.train_seconds, "wall_seconds": time.time() - t0,
        "device": tcfg.device, "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------- report
def _cell(ppls: list[float]) -> str:
    if not ppls:
        return "–"
    if len(ppls) == 1:
        return f"{ppls[0]:.3f} (n=1)"
    return f"{statistics.fmean(ppls):.3f} ± {statistics.stdev(ppls):.3f} (n={len(ppls)})"


def report(results: dict[str, Any], groups: list[str], meta: dict[str, Any]) -> str:
    """The Markdown report: one table per group (rows variants, columns recipes; cells mean ±
    sample std of final validation perplexity over seeds) and the seed-noise verdict."""
    runs = list(results.values())
    lines = ["# Tiny-table quality study", "",
             f"Command: `{meta['command']}`", "",
             f"Device: {meta['device']}; {meta['procs']} processes x {meta['threads']} torch "
             f"threads; {len(runs)} runs; {meta['elapsed_s']:.0f} s this call.", "",
             "Cells: final validation perplexity, mean ± sample std over seeds (n = seeds "
             "finished). Recipe: `mlra compare` defaults with one knob changed.", ""]
    for group in groups:
        variants, recs = recipes(group)
        cols = (DEFAULT, *recs) if group != "seeds" else (DEFAULT,)
        lines += [f"## {group}", "", "| variant | " + " | ".join(r.label for r in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for v in variants:
            cells = [_cell([r["val_ppl"] for r in runs
                            if r["variant"] == v and r["recipe"] == rec.label]) for rec in cols]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    seeds = {v: [(r["seed"], r["val_ppl"]) for r in runs
                 if r["variant"] == v and r["recipe"] == DEFAULT.label]
             for v in DEFAULT_VARIANTS}
    counts = {len(s) for s in seeds.values()}
    if len(counts) == 1 and min(counts) >= 2:
        summaries = summarize(seeds)
        verdict = noise_verdict(summaries)
        lines += [f"Default recipe: pooled seed std {verdict.pooled_std:.3f} ppl; a gap of two "
                  f"means of {min(counts)} seeds is beyond noise above {verdict.threshold:.3f} "
                  f"ppl. Best: {verdict.best}; gaps: "
                  + ", ".join(f"{s.variant} +{verdict.gaps[s.variant]:.3f}"
                              + ("" if verdict.beyond_noise(s.variant) else " (noise)")
                              for s in summaries if s.variant != verdict.best) + ".", ""]
    return "\n".join(lines)


def _device_description(device: str) -> str:
    cpu = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    if device == "cuda" and torch.cuda.is_available():
        return (f"{torch.cuda.get_device_name(0)} (fp32 with TF32 matmuls), {cpu}, "
                f"torch {torch.__version__}")
    return f"CPU, {cpu}, fp32, torch {torch.__version__}"


def save(path: Path, results: dict[str, Any], groups: list[str], meta: dict[str, Any]) -> None:
    ordered = dict(sorted(results.items()))
    atomic_write_text(path.with_suffix(".json"),
                      json.dumps({"meta": meta, "runs": ordered}, indent=1) + "\n")
    atomic_write_text(path.with_suffix(".md"), report(ordered, groups, meta) + "\n")


# ---------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cc = CompareConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True,
                   help="results path without suffix (writes .json and .md)")
    p.add_argument("--runs", default="runs/quality", help="run directories (default runs/quality)")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"subset of {','.join(GROUPS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the default recipe (3)")
    p.add_argument("--sweep-seeds", type=int, default=2, help="seeds of every other recipe (2)")
    p.add_argument("--procs", type=int, default=8, help="training processes (8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process (2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=cc.steps, help="base steps (compare's default)")
    p.add_argument("--eval-interval", type=int, default=cc.eval_interval)
    p.add_argument("--val-tokens", type=int, default=cc.val_tokens)
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no run that would end after this many seconds")
    args = p.parse_args(argv)
    args.groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    bad = set(args.groups) - set(GROUPS)
    if bad:
        p.error(f"unknown group(s) {sorted(bad)}; choose from {', '.join(GROUPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    path = Path(args.results)
    results: dict[str, Any] = {}
    if path.with_suffix(".json").is_file():
        results = json.loads(path.with_suffix(".json").read_text())["runs"]
    specs = plan(args.groups, args.seeds, args.sweep_seeds)
    configs = {s.name: train_config(s, args) for s in specs}
    todo = [s for s in specs if s.name not in results
            or results[s.name]["settings"] != _settings(configs[s.name])]
    meta = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "device": _device_description(args.device), "procs": args.procs,
            "threads": args.threads, "elapsed_s": 0.0}
    print(f"{len(specs)} runs planned, {len(specs) - len(todo)} already done, "
          f"{len(todo)} to train on {meta['device']}", flush=True)
    first = configs[todo[0].name] if todo else None
    if first is not None:  # build the corpus cache once, before the workers race for it
        resolve_data(first.data, first.val_data, first.tokenizer, first.gpt2_file,
                     progress=False)
    per_step: list[float] = []  # seconds per base step, from finished runs
    skipped: list[str] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.procs, mp_context=ctx) as pool:
        running: dict[Future, Spec] = {}
        queue = list(todo)
        while queue or running:
            while queue and len(running) < args.procs:
                spec = queue.pop(0)
                steps = configs[spec.name].steps
                if args.deadline_s is not None and per_step:
                    eta = time.time() - t0 + 1.15 * max(per_step) * steps
                    if eta > args.deadline_s:
                        skipped.append(spec.name)
                        continue
                running[pool.submit(train_one, spec, configs[spec.name], args.threads)] = spec
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                spec = running.pop(fut)
                try:
                    rec = fut.result()
                except Exception as exc:  # one failed run must not end the study
                    print(f"{spec.name}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    continue
                results[spec.name] = rec
                per_step.append(rec["wall_seconds"] / configs[spec.name].steps)
                meta["elapsed_s"] = time.time() - t0
                save(path, results, args.groups, meta)
                print(f"[{time.time() - t0:5.0f} s] {spec.name}: ppl {rec['val_ppl']:.3f} "
                      f"({rec['wall_seconds']:.0f} s)", flush=True)
    meta["elapsed_s"] = time.time() - t0
    save(path, results, args.groups, meta)
    if skipped:
        print(f"deadline: {len(skipped)} runs not started ({', '.join(skipped)}); run again "
              "to train them", flush=True)
    print(f"done in {time.time() - t0:.0f} s; {path.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
