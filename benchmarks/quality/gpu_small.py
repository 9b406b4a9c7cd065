"""The GPU comparison at the ``small`` preset (~125M parameters, parameter-matched): MHA, GQA,
MLA, GLA-2, MLRA-2 and MLRA-4 trained with one recipe on the same tokens of one corpus, scored
on its held-out split, two seeds for MLA and MLRA-4. One resumable command:

    python benchmarks/quality/gpu_small.py --corpus /path/to/text --out runs/quality_small \
        --time-limit 540

Call it again (e.g. in the next device call) until it prints the table: every run checkpoints
every ``--ckpt-interval`` steps and continues exactly where the last call stopped (the trainer's
exact resume); a run cut off by ``--time-limit`` loses at most the steps since its last
checkpoint. ``--corpus``: any text the machine holds (a directory of .py/.txt/.md files, JSONL,
or a FineWeb-Edu text dump); it is tokenized once into ``OUT/data`` with a BPE trained on it and
a held-out validation split (``mlra data prepare``). The defaults train 3,052 steps of 64 x 1024
tokens (200M tokens) per run. Writes ``OUT/results.md``, ``OUT/results.json`` and
``OUT/val_curves.png`` with the paper's Table 3 order beside ours.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from dataclasses import replace
from pathlib import Path

from mlra.atomic import atomic_write_text
from mlra.checkpoints.runs import list_checkpoints
from mlra.train.compare import DEFAULT_VARIANTS, CompareConfig
from mlra.train.config import TrainConfig
from mlra.train.metrics import METRICS_FILE, plot_curves, read_metrics

PAPER_TABLE3 = {"mlra_4": 13.672, "mla": 13.727, "gla_2": 13.779, "mlra_2": 13.804,
                "mha": 13.860, "gqa": 14.139}
"""Average validation perplexity of the 2.9B models on FineWeb-Edu (paper, Table 3)."""

SECOND_SEED = ("mla", "mlra_4")


def jobs(cc: CompareConfig) -> list[tuple[str, int]]:
    """First seed of every variant, then the second seed of MLA and MLRA-4."""
    return [(v, cc.seed) for v in cc.variants] + [
        (v, cc.seed + 1) for v in SECOND_SEED if v in cc.variants]


def train_config(cc: CompareConfig, variant: str, seed: int, ckpt_interval: int) -> TrainConfig:
    return replace(cc.train_config(variant, seed), ckpt_interval=ckpt_interval, keep_last=2,
                   log_interval=max(1, cc.steps // 200))


def last_step(run_dir: Path) -> int:
    ckpts = list_checkpoints(run_dir) if run_dir.is_dir() else []
    return max((step for step, _ in ckpts), default=0)


def _train(tcfg: TrainConfig, resume: str | None) -> None:
    from mlra.train.trainer import train

    train(tcfg, resume=resume, overwrite=resume is None)


def run_until(tcfg: TrainConfig, deadline: float) -> bool:
    """Train (or continue) one run in a child process until it finishes or ``deadline``;
    True when it finished. A run stopped at the deadline keeps its last complete checkpoint."""
    out = Path(tcfg.out or "")
    resume = str(out) if last_step(out) > 0 else None
    proc = multiprocessing.get_context("spawn").Process(target=_train, args=(tcfg, resume))
    proc.start()
    proc.join(None if math.isinf(deadline) else max(0.0, deadline - time.time()))
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return False
    if proc.exitcode != 0:
        raise SystemExit(f"{out}: training failed (exit code {proc.exitcode}); see above")
    return last_step(out) >= tcfg.steps


def final_val(run_dir: Path, steps: int) -> tuple[float, list[tuple[int, float]]] | None:
    rows = [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("split") == "val"]
    curve = [(r["tokens"], r["loss"]) for r in rows if r["step"] > 0]
    final = [r["loss"] for r in rows if r["step"] == steps]
    return (final[-1], curve) if final else None


def table(cc: CompareConfig, finished: dict[tuple[str, int], float]) -> tuple[str, dict]:
    """Our mean validation perplexity per variant beside the paper's Table 3, each ranked."""
    ours = {v: [math.exp(loss) for (vv, _), loss in finished.items() if vv == v]
            for v in cc.variants}
    ours = {v: p for v, p in ours.items() if p}
    rank = {v: i + 1 for i, v in enumerate(sorted(ours, key=lambda v: statistics.fmean(ours[v])))}
    paper_rank = {v: i + 1 for i, v in enumerate(sorted(PAPER_TABLE3, key=PAPER_TABLE3.get))}
    lines = ["| variant | val ppl (ours) | seeds | our rank | paper Table 3 ppl (2.9B) | "
             "paper rank |", "|---|---|---|---|---|---|"]
    for v in sorted(ours, key=rank.get):
        p = ours[v]
        cell = f"{statistics.fmean(p):.3f}" + (f" ({' / '.join(f'{x:.3f}' for x in p)})"
                                               if len(p) > 1 else "")
        lines.append(f"| {v} | {cell} | {len(p)} | {rank[v]} | {PAPER_TABLE3.get(v, '–')} | "
                     f"{paper_rank.get(v, '–')} |")
    return "\n".join(lines), {"ours": ours, "our_rank": rank, "paper": PAPER_TABLE3,
                              "paper_rank": paper_rank}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="text to train on (see above)")
    p.add_argument("--out", default="runs/quality_small")
    p.add_argument("--size", default="small")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--steps", type=int, default=3052)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: the size's)")
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--val-tokens", type=int, default=1_048_576)
    p.add_argument("--ckpt-interval", type=int, default=250)
    p.add_argument("--vocab-size", type=int, default=32768, help="BPE vocabulary")
    p.add_argument("--device", default="cuda")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (resumably) after this many seconds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    deadline = t0 + args.time_limit if args.time_limit else math.inf
    out = Path(args.out)
    data = out / "data"
    if not (data / "meta.json").is_file():
        from mlra.data.prepare import prepare

        print(f"tokenizing {args.corpus} into {data} (BPE {args.vocab_size}) ...", flush=True)
        prepare([args.corpus], data, "bpe", vocab_size=args.vocab_size, overwrite=True,
                errors="replace")
    cc = CompareConfig(
        variants=tuple(v.strip() for v in args.variants.split(",")), size=args.size,
        data=str(data), out=str(out), steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, lr=args.lr, warmup_steps=None, eval_interval=args.eval_interval,
        val_tokens=args.val_tokens, device=args.device, progress=False,
    )
    finished: dict[tuple[str, int], float] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for variant, seed in jobs(cc):
        tcfg = train_config(cc, variant, seed, args.ckpt_interval)
        run_dir = Path(tcfg.out or "")
        done = last_step(run_dir) >= tcfg.steps
        if not done and time.time() < deadline:
            print(f"{run_dir.name}: from step {last_step(run_dir)} ...", flush=True)
            done = run_until(tcfg, deadline)
        result = final_val(run_dir, tcfg.steps) if done else None
        if result is None:
            print(f"{run_dir.name}: at step {last_step(run_dir)} of {tcfg.steps}; run again",
                  flush=True)
            continue
        finished[(variant, seed)] = result[0]
        if seed == cc.seed:
            curves[variant] = result[1]
    text, summary = table(cc, finished)
    total = len(jobs(cc))
    head = (f"# small-preset comparison ({len(finished)} of {total} runs finished)\n\n"
            f"{args.steps} steps x {args.batch_size} x {args.seq_len} tokens per run, "
            f"corpus {args.corpus} (BPE {args.vocab_size}, held-out split), size {args.size}.\n")
    atomic_write_text(out / "results.md", head + "\n" + text + "\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"args": vars(args), "runs": {f"{v}-seed{s}": math.exp(loss)
                                      for (v, s), loss in finished.items()},
         **summary}, indent=1) + "\n")
    plot_curves(curves, out / "val_curves.png", xlabel="training tokens",
                ylabel="validation loss (nats/token)", title=f"{args.size} presets, held-out")
    print(head + "\n" + text, flush=True)
    return 0 if len(finished) == total else 3


if __name__ == "__main__":
    raise SystemExit(main())
