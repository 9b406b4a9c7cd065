"""``mlra compare``: train several attention variants with one seed and token budget and
tabulate validation perplexity, parameters, KV cache per token (total and per device under
tensor parallelism) and training throughput.

Every variant is a normal training run in ``OUT/<variant>/`` (metrics, loss curve, final
checkpoint). A variant whose finished run in ``OUT`` used the same settings is reused, so an
interrupted comparison continues where it stopped (``--force`` retrains).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
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
from mlra.train.trainer import train

DEFAULT_VARIANTS = ("mha", "gqa", "mla", "gla_2", "mlra_2", "mlra_4")
RESULT_FILE = "compare_result.json"


@dataclass
class CompareConfig:
    """Settings shared by every variant of a comparison. The defaults take about 7 minutes on
    an idle 2-core CPU (measured: 250 steps of all six variants in 4.3 min). The learning rate
    1e-3 is one that every variant trains well with at this size: the latent variants stall on
    the unigram plateau at 2e-3 for hundreds of steps, while MHA/GQA would prefer 2e-3."""

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
        workers = max(1, min(workers, len(self.variants)))
        return workers, max(1, cores // workers)

    def train_config(self, variant: str) -> TrainConfig:
        return TrainConfig(
            model=variant, size=self.size, data=self.data, tokenizer=self.tokenizer,
            out=str(Path(self.out) / variant), steps=self.steps, batch_size=self.batch_size,
            seq_len=self.seq_len, lr=self.lr, warmup_steps=self.warmup_steps,
            eval_interval=self.eval_interval, val_tokens=self.val_tokens, seed=self.seed,
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


def _unit(mcfg: Any) -> int:
    """The d_h unit of the KV columns: the head dim of the size's MHA, d_model / n_heads (MFA's
    own heads are twice that)."""
    return mcfg.d_model // mcfg.n_heads


def _row_from_result(variant: str, result: Any, tp: int, tokens_per_step: int) -> CompareRow:
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
        val_curve=[(s * tokens_per_step, loss) for s, loss in result.val_curve],
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _train_variant(
    cc: CompareConfig, variant: str, threads: int | None, quiet: bool
) -> CompareRow:
    """Train one variant (in this process or a worker) and record its row."""
    if threads is not None:
        torch.set_num_threads(threads)
    tcfg = cc.train_config(variant)
    if quiet:
        tcfg.progress = False
    log = (lambda msg: None) if quiet else print
    result = train(tcfg, overwrite=True, log=log)
    seq = tcfg.seq_len or result.model_config.max_seq_len
    row = _row_from_result(variant, result, cc.tp, tcfg.batch_size * tcfg.grad_accum * seq)
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


def _run_compare(cc: CompareConfig, log: Callable[[str], None]) -> list[CompareRow]:
    t_start = time.time()
    rows: dict[str, CompareRow] = {}
    todo = []
    for variant in cc.variants:
        tcfg = cc.train_config(variant)
        cached = _cached_row(Path(tcfg.out), tcfg, cc.tp)
        if cached is not None and not cc.force:
            log(f"{variant}: reusing the finished run in {tcfg.out}")
            rows[variant] = cached
        else:
            todo.append(variant)
    workers, threads = cc.plan()
    workers = min(workers, max(1, len(todo)))
    if todo:
        # Prepare the data once (e.g. the built-in corpus cache) before any worker starts.
        first = cc.train_config(todo[0])
        resolve_data(first.data, first.val_data, first.tokenizer, first.gpt2_file,
                     progress=cc.progress)
        log(f"training {', '.join(todo)}: {cc.steps} steps each, {workers} at a time with "
            f"{threads} thread(s) each ...")
    if workers == 1:
        for i, variant in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {variant}")
            rows[variant] = _train_variant(cc, variant, None, quiet=False)
    elif todo:
        rows.update(_train_in_workers(cc, todo, workers, threads, t_start, log))
    ordered = [rows[v] for v in cc.variants]
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
    cc: CompareConfig, todo: Sequence[str], workers: int, threads: int, t_start: float,
    log: Callable[[str], None],
) -> dict[str, CompareRow]:
    """Train ``todo`` in ``workers`` spawned processes; one progress bar over all of them
    (fed from the runs' metrics logs)."""
    for v in todo:  # stale logs would make the progress bar jump
        (Path(cc.train_config(v).out) / METRICS_FILE).unlink(missing_ok=True)
    rows: dict[str, CompareRow] = {}
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=cc.steps * len(todo), desc="compare", unit="step", dynamic_ncols=True,
               disable=not cc.progress, file=sys.stderr)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # Longest first (more latent branches/groups cost more attention) balances workers.
        order = sorted(todo, key=lambda v: -_cost_rank(cc, v))
        futures = {pool.submit(_train_variant, cc, v, threads, True): v for v in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for fut in done:
                variant = futures[fut]
                row = fut.result()
                rows[variant] = row
                msg = (f"{variant}: validation perplexity {row.val_ppl:.3f} after "
                       f"{row.train_seconds:.0f} s of training ({time.time() - t_start:.0f} s "
                       "elapsed)")
                if bar.disable:
                    log(msg)
                else:
                    bar.write(msg, file=sys.stderr)
            steps = sum(cc.steps if v in rows else _last_step(Path(cc.train_config(v).out))
                        for v in todo)
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


def format_table(rows: Sequence[CompareRow], cc: CompareConfig, workers: int = 1) -> str:
    """The comparison as a Markdown table with a short legend."""
    head = ["variant", "val ppl", "val loss", "params", "KV/token/layer",
            f"KV/token/layer/device @TP{cc.tp}", "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = min(r.val_ppl for r in rows)
    for r in rows:
        ppl = f"**{r.val_ppl:.3f}**" if r.val_ppl == best else f"{r.val_ppl:.3f}"
        lines.append(
            f"| {r.variant} | {ppl} | {r.val_loss:.4f} | {r.params / 1e6:.3f}M | "
            f"{r.kv_per_token_per_layer} ({r.kv_head_dim_units:g} d_h) | "
            f"{r.kv_per_token_per_layer_per_device} ({r.kv_head_dim_units_per_device:g} d_h) | "
            f"{r.tokens_per_s:,.0f} |"
        )
    tokens = rows[0].train_tokens if rows else 0
    legend = (
        f"\nSize {cc.size!r}, data {cc.data!r}, {tokens:,} training tokens per variant "
        f"({cc.steps} steps), seed {cc.seed}. Validation: the same fixed slice for every "
        "variant. KV: cache elements per token per layer, in total and on one device of a "
        f"TP-{cc.tp} group (d_h = head dim). Tiny models on a small budget: differences of a "
        "few percent in perplexity are within seed noise; the paper's comparison is at 2.9B "
        "parameters and 98B tokens."
        + (f" Throughput measured with {workers} variants training side by side." if workers > 1
           else "")
    )
    return "\n".join(lines) + "\n" + legend


def write_outputs(
    rows: Sequence[CompareRow], cc: CompareConfig, elapsed: float,
    log: Callable[[str], None] = print, workers: int = 1, threads: int | None = None,
) -> None:
    """``results.md``, ``results.json`` and ``val_curves.png`` in the output directory."""
    out = Path(cc.out)
    table = format_table(rows, cc, workers)
    device = "cuda" if (cc.device == "auto" and torch.cuda.is_available()) else cc.device
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cc).items()}
    atomic_write_text(out / "results.md", f"# mlra compare\n\n{table}\n")
    atomic_write_text(out / "results.json", json.dumps({
        "settings": settings, "device": device, "workers": workers,
        "torch_threads_per_worker": threads or torch.get_num_threads(),
        "seconds": elapsed, "rows": [asdict(r) for r in rows],
    }, indent=1) + "\n")
    # The step-0 point (~log vocab for every variant) would squash the interesting range.
    drew = plot_curves(
        {r.variant: [p for p in r.val_curve if p[0] > 0] for r in rows}, out / "val_curves.png",
        xlabel="training tokens", ylabel="validation loss (nats/token)",
        title=f"validation loss, {cc.size} presets on {cc.data}",
    )
    print(table)
    log(f"\nwrote {out / 'results.md'}, {out / 'results.json'}"
        + (f", {out / 'val_curves.png'}" if drew else
           " (no plot: pip install 'mlra[plot]' for val_curves.png)")
        + f" in {elapsed / 60:.1f} min")
