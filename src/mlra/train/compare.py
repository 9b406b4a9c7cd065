"""``mlra compare``: train several attention variants with one seed and token budget and
tabulate validation perplexity, parameters, KV cache per token (total and per device under
tensor parallelism) and training throughput.

Every variant is a normal training run in ``OUT/<variant>/`` (metrics, loss curve, final
checkpoint); with ``--seeds N`` the further seeds train in ``OUT/<variant>-seed<S>/``. A run
whose finished result in ``OUT`` used the same settings is reused, so an interrupted comparison
continues where it stopped (``--force`` retrains).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mlra.atomic import atomic_write_text
from mlra.checkpoints.runs import RunLock
from mlra.config import VARIANTS
from mlra.data.sources import resolve_data
from mlra.errors import ConfigError, MlraError
from mlra.kv_accounting import kv_elements_per_device, kv_elements_total
from mlra.train.config import PRESENTATION_ONLY, TrainConfig
from mlra.train.metrics import METRICS_FILE, plot_curves, read_metrics
from mlra.train.seed_stats import noise_footnote, noise_verdict, summarize
from mlra.train.trainer import train

DEFAULT_VARIANTS = ("mha", "gqa", "mla", "gla_2", "mlra_2", "mlra_4")
RESULT_FILE = "compare_result.json"


@dataclass
class CompareConfig:
    """Settings shared by every variant of a comparison. The defaults take about 7 minutes on
    an idle 2-core CPU (measured: 250 steps of all six variants in 4.3 min). The learning rate
    1e-3 is one that every variant trains well with at this size: the latent variants stall on
    the unigram plateau at 2e-3 for hundreds of steps, while MHA/GQA would prefer 2e-3
    (the sweep: benchmarks/quality/README.md)."""

    variants: Sequence[str] = DEFAULT_VARIANTS
    size: str = "tiny"
    data: str = "builtin"
    tokenizer: str | None = None
    out: str = "runs/compare"
    steps: int = 400
    batch_size: int = 8
    seq_len: int | None = 128
    lr: float | None = 1e-3
    warmup_steps: int | None = 20
    eval_interval: int = 50
    val_tokens: int = 16_384
    seed: int = 1234
    tp: int = 4
    device: str = "auto"
    compile: bool = False
    progress: bool = True
    force: bool = False
    workers: int | None = None
    seeds: int = 1
    """Seeds per variant: ``seed``, ``seed + 1``, ... (the table then shows mean and spread)."""

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
        if not self.variants:
            raise ConfigError("no variants selected")
        if self.tp < 1:
            raise ConfigError(f"--tp must be >= 1, got {self.tp}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {self.seeds}")

    @property
    def seed_list(self) -> list[int]:
        """The seeds every variant trains with."""
        return [self.seed + i for i in range(self.seeds)]

    def jobs(self) -> list[tuple[str, int]]:
        """Every (variant, seed) run of the comparison, variant by variant."""
        return [(v, s) for v in self.variants for s in self.seed_list]

    def run_dir(self, variant: str, seed: int | None = None) -> Path:
        """``OUT/<variant>`` for the first seed (as a one-seed comparison), else
        ``OUT/<variant>-seed<S>``."""
        if seed is None or seed == self.seed:
            return Path(self.out) / variant
        return Path(self.out) / f"{variant}-seed{seed}"

    def plan(self) -> tuple[int, int]:
        """(parallel training processes, torch threads each). On CPU the variants train side
        by side, one process per core with one thread each: tiny models gain little from a
        second thread, and single-threaded processes do not collapse when the machine is busy
        (OpenMP teams spin-wait badly when oversubscribed). On a GPU: one at a time."""
        on_gpu = self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())
        cores = _cores()
        if self.workers is not None:
            workers = self.workers
        else:
            workers = 1 if on_gpu else cores
        workers = max(1, min(workers, len(self.variants) * self.seeds))
        return workers, max(1, cores // workers)

    def train_config(self, variant: str, seed: int | None = None) -> TrainConfig:
        """The training run of ``variant`` with ``seed`` (default: the first seed)."""
        seed = self.seed if seed is None else seed
        return TrainConfig(
            model=variant, size=self.size, data=self.data, tokenizer=self.tokenizer,
            out=str(self.run_dir(variant, seed)), steps=self.steps, batch_size=self.batch_size,
            seq_len=self.seq_len, lr=self.lr, warmup_steps=self.warmup_steps,
            eval_interval=self.eval_interval, val_tokens=self.val_tokens, seed=seed,
            ckpt_interval=self.steps, keep_last=1, log_interval=max(1, self.steps // 40),
            device=self.device, compile=self.compile, progress=self.progress,
        )


@dataclass
class CompareRow:
    """One variant's line of the table."""

    variant: str
    params: int
    val_loss: float
    val_ppl: float
    kv_per_token_per_layer: int
    kv_per_token_per_layer_per_device: int
    kv_head_dim_units: float
    kv_head_dim_units_per_device: float
    tokens_per_s: float
    train_tokens: int
    train_seconds: float
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    seed: int | None = None


def _unit(mcfg: Any) -> int:
    """The d_h unit of the KV columns: the head dim of the size's MHA, d_model / n_heads (MFA's
    own heads are twice that)."""
    return mcfg.d_model // mcfg.n_heads


def _row_from_result(
    variant: str, result: Any, tp: int, tokens_per_step: int, seed: int
) -> CompareRow:
    mcfg = result.model_config
    total = kv_elements_total(mcfg)
    per_dev = kv_elements_per_device(mcfg, tp)
    dh = _unit(mcfg)
    return CompareRow(
        variant=variant, params=result.params, val_loss=result.final_val_loss,
        val_ppl=math.exp(result.final_val_loss), kv_per_token_per_layer=total,
        kv_per_token_per_layer_per_device=per_dev, kv_head_dim_units=total / dh,
        kv_head_dim_units_per_device=per_dev / dh, tokens_per_s=result.tokens_per_s,
        train_tokens=result.train_tokens, train_seconds=result.train_seconds,
        val_curve=[(s * tokens_per_step, loss) for s, loss in result.val_curve], seed=seed,
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _train_variant(
    cc: CompareConfig, variant: str, seed: int, threads: int | None, quiet: bool
) -> CompareRow:
    """Train one variant with one seed (in this process or a worker) and record its row."""
    if threads is not None:
        torch.set_num_threads(threads)
    tcfg = cc.train_config(variant, seed)
    if quiet:
        tcfg.progress = False
    log = (lambda msg: None) if quiet else print
    result = train(tcfg, overwrite=True, log=log)
    seq = tcfg.seq_len or result.model_config.max_seq_len
    row = _row_from_result(variant, result, cc.tp, tcfg.batch_size * tcfg.grad_accum * seq, seed)
    atomic_write_text(Path(tcfg.out) / RESULT_FILE, json.dumps(
        {"config": tcfg.to_dict(), "row": asdict(row)}, indent=1) + "\n")
    return row


def run_compare(cc: CompareConfig, log: Callable[[str], None] = print) -> list[CompareRow]:
    """Train every variant of ``cc`` (reusing finished identical runs) and write the table.
    The output directory is locked for the duration (one comparison writes to it at a time)."""
    if cc.eval_interval <= 0:
        raise ConfigError("mlra compare needs validation: --eval-interval must be positive")
    with RunLock(cc.out):
        return _run_compare(cc, log)


Job = tuple[str, int]
"""One run of a comparison: (variant, seed)."""


def _job_name(cc: CompareConfig, job: Job) -> str:
    return cc.run_dir(*job).name


def _run_compare(cc: CompareConfig, log: Callable[[str], None]) -> list[CompareRow]:
    t_start = time.time()
    rows: dict[Job, CompareRow] = {}
    todo: list[Job] = []
    for job in cc.jobs():
        tcfg = cc.train_config(*job)
        cached = _cached_row(Path(tcfg.out), tcfg, cc.tp)
        if cached is not None and not cc.force:
            log(f"{_job_name(cc, job)}: reusing the finished run in {tcfg.out}")
            rows[job] = cached
        else:
            todo.append(job)
    workers, threads = cc.plan()
    workers = min(workers, max(1, len(todo)))
    if todo:
        # Prepare the data once (e.g. the built-in corpus cache) before any worker starts.
        first = cc.train_config(*todo[0])
        resolve_data(first.data, first.val_data, first.tokenizer, first.gpt2_file,
                     progress=cc.progress)
        names = ", ".join(_job_name(cc, j) for j in todo)
        log(f"training {names}: {cc.steps} steps each, {workers} at a time with "
            f"{threads} thread(s) each ...")
    if workers == 1:
        for i, job in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {_job_name(cc, job)}")
            rows[job] = _train_variant(cc, *job, None, quiet=False)
    elif todo:
        rows.update(_train_in_workers(cc, todo, workers, threads, t_start, log))
    ordered = [rows[j] for j in cc.jobs()]
    write_outputs(ordered, cc, time.time() - t_start, log, workers=workers, threads=threads)
    return ordered


def _last_step(run_dir: Path) -> int:
    rows = read_metrics(run_dir / METRICS_FILE)
    return max((r["step"] for r in rows if r.get("split") == "train"), default=0)


def _cost_rank(cc: CompareConfig, variant: str) -> int:
    mcfg = cc.train_config(variant).model_config()
    if mcfg.family == "latent":  # a scheduling hint only: each branch is another attention
        return 10 * mcfg.latent_branches + mcfg.latent_groups
    return 0


def _train_in_workers(
    cc: CompareConfig, todo: Sequence[Job], workers: int, threads: int, t_start: float,
    log: Callable[[str], None],
) -> dict[Job, CompareRow]:
    """Train ``todo`` in ``workers`` spawned processes; one progress bar over all of them
    (fed from the runs' metrics logs)."""
    for job in todo:  # stale logs would make the progress bar jump
        (cc.run_dir(*job) / METRICS_FILE).unlink(missing_ok=True)
    rows: dict[Job, CompareRow] = {}
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=cc.steps * len(todo), desc="compare", unit="step", dynamic_ncols=True,
               disable=not cc.progress, file=sys.stderr)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # Longest first (more latent branches/groups cost more attention) balances workers.
        order = sorted(todo, key=lambda j: -_cost_rank(cc, j[0]))
        futures = {pool.submit(_train_variant, cc, v, s, threads, True): (v, s)
                   for v, s in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for fut in done:
                job = futures[fut]
                row = fut.result()
                rows[job] = row
                msg = (f"{_job_name(cc, job)}: validation perplexity {row.val_ppl:.3f} after "
                       f"{row.train_seconds:.0f} s of training ({time.time() - t_start:.0f} s "
                       "elapsed)")
                if bar.disable:
                    log(msg)
                else:
                    bar.write(msg, file=sys.stderr)
            steps = sum(cc.steps if j in rows else _last_step(cc.run_dir(*j)) for j in todo)
            bar.update(max(0, steps - bar.n))
    bar.close()
    return rows


def _result_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run that change its result: all but the presentation-only ones
    (whether a progress bar was drawn -- the variants trained side by side draw none, so a
    comparison that kept it would never reuse them)."""
    plain = json.loads(json.dumps(config))
    return {k: v for k, v in plain.items() if k not in PRESENTATION_ONLY}


def _cached_row(run_dir: Path, tcfg: TrainConfig, tp: int) -> CompareRow | None:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if _result_settings(data["config"]) != _result_settings(tcfg.to_dict()):
            return None
        row = CompareRow(**data["row"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    row.seed = tcfg.seed  # results written before rows named their seed
    if row.val_curve:
        row.val_curve = [tuple(p) for p in row.val_curve]  # type: ignore[misc]
    # The KV columns depend on --tp, which does not change the training run.
    from mlra.checkpoints.format import read_model_config
    from mlra.checkpoints.runs import resolve_checkpoint

    try:
        mcfg = read_model_config(resolve_checkpoint(run_dir))
    except MlraError:
        return None
    dh = _unit(mcfg)
    row.kv_per_token_per_layer_per_device = kv_elements_per_device(mcfg, tp)
    row.kv_head_dim_units_per_device = row.kv_per_token_per_layer_per_device / dh
    return row


def _per_variant(rows: Sequence[CompareRow]) -> dict[str, list[CompareRow]]:
    """Rows grouped by variant, in first-seen order."""
    grouped: dict[str, list[CompareRow]] = {}
    for r in rows:
        grouped.setdefault(r.variant, []).append(r)
    return grouped


def _seed_summaries(rows: Sequence[CompareRow]) -> list[Any]:
    return summarize({v: [(r.seed if r.seed is not None else -1, r.val_ppl) for r in rs]
                      for v, rs in _per_variant(rows).items()})


def _kv_cells(r: CompareRow) -> str:
    return (f"{r.kv_per_token_per_layer} ({r.kv_head_dim_units:g} d_h) | "
            f"{r.kv_per_token_per_layer_per_device} ({r.kv_head_dim_units_per_device:g} d_h)")


def format_table(rows: Sequence[CompareRow], cc: CompareConfig, workers: int = 1) -> str:
    """The comparison as a Markdown table with a short legend: one row per variant (with
    several seeds: mean ± std, range, each seed's value and a footnote on seed noise)."""
    if cc.seeds > 1:
        return _format_seed_table(rows, cc, workers)
    head = ["variant", "val ppl", "val loss", "params", "KV/token/layer",
            f"KV/token/layer/device @TP{cc.tp}", "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = min(r.val_ppl for r in rows)
    for r in rows:
        ppl = f"**{r.val_ppl:.3f}**" if r.val_ppl == best else f"{r.val_ppl:.3f}"
        lines.append(
            f"| {r.variant} | {ppl} | {r.val_loss:.4f} | {r.params / 1e6:.3f}M | "
            f"{_kv_cells(r)} | {r.tokens_per_s:,.0f} |"
        )
    noise = ("One seed: the seed spread is not measured (--seeds 3 measures it and says which "
             "differences exceed it)")
    return "\n".join(lines) + "\n" + _legend(rows, cc, workers, f"seed {cc.seed}", noise)


def _format_seed_table(rows: Sequence[CompareRow], cc: CompareConfig, workers: int) -> str:
    summaries = _seed_summaries(rows)
    verdict = noise_verdict(summaries)
    head = ["variant", "val ppl (mean ± std)", "min–max", "gap to best", "per seed", "params",
            "KV/token/layer", f"KV/token/layer/device @TP{cc.tp}", "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    grouped = _per_variant(rows)
    for s in summaries:
        r = grouped[s.variant][0]
        mean = f"{s.mean:.3f} ± {s.std:.3f}"
        if s.variant == verdict.best:
            mean, gap = f"**{mean}**", "best"
        else:
            gap = f"+{verdict.gaps[s.variant]:.3f}" + (
                "" if verdict.beyond_noise(s.variant) else " (noise)")
        tok_s = statistics.fmean(x.tokens_per_s for x in grouped[s.variant])
        lines.append(
            f"| {s.variant} | {mean} | {s.low:.3f}–{s.high:.3f} | {gap} | "
            f"{' / '.join(f'{p:.3f}' for p in s.ppls)} | {r.params / 1e6:.3f}M | "
            f"{_kv_cells(r)} | {tok_s:,.0f} |"
        )
    seeds = f"seeds {cc.seed}–{cc.seed + cc.seeds - 1}"
    return ("\n".join(lines) + "\n" + _legend(rows, cc, workers, seeds, "")
            + "\n\n" + noise_footnote(summaries, verdict))


def _legend(rows: Sequence[CompareRow], cc: CompareConfig, workers: int, seeds: str,
            noise: str) -> str:
    tokens = rows[0].train_tokens if rows else 0
    return (
        f"\nSize {cc.size!r}, data {cc.data!r}, {tokens:,} training tokens per variant "
        f"({cc.steps} steps), {seeds}. Validation: the same fixed slice for every "
        "variant. KV: cache elements per token per layer, in total and on one device of a "
        f"TP-{cc.tp} group (d_h = head dim). " + (f"{noise}. " if noise else "")
        + "What a tiny table can and cannot show: benchmarks/quality/README.md; the paper's "
        "comparison is at 2.9B parameters and 98B tokens."
        + (f" Throughput measured with {workers} runs training side by side." if workers > 1
           else "")
    )


def _summary_json(rows: Sequence[CompareRow]) -> dict[str, Any]:
    summaries = _seed_summaries(rows)
    verdict = noise_verdict(summaries)
    return {
        "spread": "std: sample standard deviation over seeds (n - 1); min/max: range",
        "pooled_std": verdict.pooled_std, "noise_threshold": verdict.threshold,
        "best": verdict.best,
        "variants": [{
            "variant": s.variant, "seeds": list(s.seeds), "val_ppl": list(s.ppls),
            "mean": s.mean, "std": s.std, "min": s.low, "max": s.high,
            "gap_to_best": verdict.gaps[s.variant],
            "beyond_noise": verdict.beyond_noise(s.variant),
        } for s in summaries],
    }


def _mean_curves(rows: Sequence[CompareRow]) -> dict[str, list[tuple[int, float]]]:
    """Each variant's validation curve averaged over its seeds (the step-0 point dropped: at
    ~log vocab for every variant it would squash the interesting range)."""
    curves = {}
    for variant, rs in _per_variant(rows).items():
        points: dict[int, list[float]] = {}
        for r in rs:
            for tokens, loss in r.val_curve:
                if tokens > 0:
                    points.setdefault(tokens, []).append(loss)
        curves[variant] = [(t, statistics.fmean(ls)) for t, ls in sorted(points.items())
                           if len(ls) == len(rs)]
    return curves


def write_outputs(
    rows: Sequence[CompareRow], cc: CompareConfig, elapsed: float,
    log: Callable[[str], None] = print, workers: int = 1, threads: int | None = None,
) -> None:
    """``results.md``, ``results.json`` (every run's row; with several seeds also the
    per-variant summary) and ``val_curves.png`` in the output directory."""
    out = Path(cc.out)
    table = format_table(rows, cc, workers)
    device = "cuda" if (cc.device == "auto" and torch.cuda.is_available()) else cc.device
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cc).items()}
    atomic_write_text(out / "results.md", f"# mlra compare\n\n{table}\n")
    result: dict[str, Any] = {
        "settings": settings, "device": device, "workers": workers,
        "torch_threads_per_worker": threads or torch.get_num_threads(),
        "seconds": elapsed, "rows": [asdict(r) for r in rows],
    }
    if cc.seeds > 1:
        result["summary"] = _summary_json(rows)
    atomic_write_text(out / "results.json", json.dumps(result, indent=1) + "\n")
    seeds = "" if cc.seeds == 1 else f", mean of {cc.seeds} seeds"
    drew = plot_curves(
        _mean_curves(rows), out / "val_curves.png",
        xlabel="training tokens", ylabel="validation loss (nats/token)",
        title=f"validation loss, {cc.size} presets on {cc.data}{seeds}",
    )
    print(table)
    log(f"\nwrote {out / 'results.md'}, {out / 'results.json'}"
        + (f", {out / 'val_curves.png'}" if drew else
           " (no plot: pip install 'mlra[plot]' for val_curves.png)")
        + f" in {elapsed / 60:.1f} min")
