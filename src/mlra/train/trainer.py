"""The training loop of ``mlra train``: one CPU, one GPU, or many through ``torchrun``.

Read it top to bottom: :meth:`Trainer.run` sets up (devices, data, model, optimizer, resume),
then loops over optimizer steps (gradient accumulation, clipping, NaN check, AdamW), evaluates
on a fixed validation slice every ``eval_interval`` steps on all ranks, and writes atomic
checkpoints every ``ckpt_interval`` steps and at the end.

Exact resume: the checkpoint holds the weights, AdamW state, the data position (samples
consumed; see :mod:`mlra.data.loader`) and the RNG state; the learning rate is a function of
the step. On CPU, N steps in one go and N/2 + resume + N/2 give bitwise-identical losses.
Resuming needs the same model, data, sequence length, seed and global batch
(batch_size x grad_accum x world size); the number of processes itself may change.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from mlra.atomic import atomic_write_text
from mlra.checkpoints import runs as ckpt
from mlra.checkpoints.format import (
    WEIGHTS_FILE,
    load_state_checked,
    read_model_config,
    save_model,
)
from mlra.config import ModelConfig
from mlra.data.loader import (
    Layout,
    TrainLoader,
    WindowedShards,
    validation_batches,
    validation_windows,
)
from mlra.data.sources import DataSource, resolve_data
from mlra.data.tokenizers import pad_vocab
from mlra.devices import parse_device
from mlra.errors import CheckpointError, ConfigError, DataError, MlraError
from mlra.loss import compiled_token_cross_entropy, token_cross_entropy
from mlra.model import Transformer
from mlra.train.config import RESUME_FIXED, TrainConfig
from mlra.train.distributed import all_reduce_sum, barrier, setup_distributed, teardown
from mlra.train.metrics import METRICS_FILE, MetricsLog, plot_run
from mlra.train.optim import build_optimizer, clip_gradients, lr_at

RUN_FILE = ckpt.RUN_FILE


class TrainingDiverged(MlraError):
    """The loss or gradient norm became NaN/Inf; the weights were not updated."""


@dataclass
class TrainResult:
    """What a finished run reports (``mlra compare`` builds its table from these)."""

    out: Path
    step: int
    params: int
    model_config: ModelConfig
    train_tokens: int
    tokens_per_s: float
    train_seconds: float
    final_train_loss: float | None
    final_val_loss: float | None
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def final_val_ppl(self) -> float | None:
        return None if self.final_val_loss is None else math.exp(self.final_val_loss)


class Trainer:
    """One training run. ``resume``: a run directory or checkpoint to continue from (the new
    checkpoints go to ``cfg.out``); ``overwrite`` replaces an existing run in ``cfg.out``."""

    status_interval_s: float = 30.0
    """Without a progress bar, a status line is logged at most this often (seconds)."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | Path | None = None,
        overwrite: bool = False,
        log: Callable[[str], None] | None = None,
        verify: bool = True,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out or f"runs/{cfg.model}-{cfg.size}")
        self.resume = resume
        self.overwrite = overwrite
        self.verify = verify
        self._lock = ckpt.RunLock(self.out)
        self._print = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._bar: tqdm | None = None
        self._last_status: float | None = None
        self.loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None  # tests

    # ------------------------------------------------------------------ logging
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            if self._bar is not None and not self._bar.disable:
                self._bar.write(msg, file=sys.stderr)
            else:
                self._print(msg)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.cfg
        probe = parse_device(cfg.device, 0)
        self.dist = setup_distributed(probe.type)
        self.device = parse_device(cfg.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16
            else contextlib.nullcontext()
        )
        self.precision = "bf16 autocast" if use_bf16 else "fp32"
        # One writer per run directory: a second `mlra train` into it is refused at once.
        self._main_first(self._lock.acquire, run_elsewhere=False)

        self.resume_dir: Path | None = None
        self.resume_state: dict[str, Any] | None = None
        self.resume_tensors: dict[str, torch.Tensor] | None = None
        if self.resume is not None:
            self.resume_dir = ckpt.resolve_checkpoint(self.resume)
            self.resume_state, self.resume_tensors = ckpt.read_trainer_state(
                self.resume_dir, verify=self.verify)
            saved = self.resume_state.get("config", {})
            for key in RESUME_FIXED:
                if key in saved and saved[key] != getattr(cfg, key):
                    raise ConfigError(
                        f"cannot resume from {self.resume_dir}: it was trained with "
                        f"{key}={saved[key]!r}, this run has {key}={getattr(cfg, key)!r}"
                    )
            source_run = ckpt.run_dir_of(self.resume_dir)
            if source_run.resolve() == self.out.resolve():
                if self.dist.is_main:
                    ckpt.clean_partial(self.out)
            else:  # continuing into another folder: never clobber a run living there
                self._main_first(lambda: self._prepare_out_dir(source_run), run_elsewhere=False)
        else:
            self._main_first(self._prepare_out_dir, run_elsewhere=False)

        # Data: the main process prepares (built-in corpus cache, text files) first.
        self.source = self._main_first(self._resolve_data)
        assert self.source is not None
        tok = self.source.tokenizer
        if self.source.note:
            self.log(self.source.note)

        self.model_config = cfg.model_config(pad_vocab(tok.vocab_size))
        if tok.vocab_size > self.model_config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tok.vocab_size} ids but the model's vocab_size is "
                f"{self.model_config.vocab_size}"
            )
        if self.resume_dir is not None:
            saved_model = read_model_config(self.resume_dir)
            if saved_model != self.model_config:
                raise CheckpointError(
                    f"cannot resume from {self.resume_dir}: its model config differs from this "
                    "run's (same --model, --size, --set and tokenizer are needed)"
                )
        self.seq_len = cfg.seq_len or self.model_config.max_seq_len
        self.train_data = WindowedShards(self.source.train, self.seq_len, tok.vocab_size)
        self.layout = Layout(cfg.batch_size, cfg.grad_accum, self.dist.world_size, self.dist.rank)
        self.loader = TrainLoader(self.train_data, self.layout, seed=cfg.seed, shuffle=cfg.shuffle)
        self.val_batches: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.val_windows = 0
        if cfg.eval_interval > 0:
            if not self.source.val:
                raise DataError(
                    f"the data {self.source.name} has no validation shards (*val*.bin); pass "
                    "--val-data, or --eval-interval 0 to train without validation"
                )
            val = WindowedShards(self.source.val, self.seq_len, tok.vocab_size)
            self.val_windows = validation_windows(val, cfg.val_tokens)
            self.val_batches = validation_batches(
                val, self.val_windows, cfg.batch_size, self.dist.rank, self.dist.world_size
            )

        self._build_model()
        self.metrics = MetricsLog(self.out / METRICS_FILE)

    def _main_first(self, fn: Callable[[], Any], run_elsewhere: bool = True) -> Any:
        """Run ``fn`` on rank 0, then (if ``run_elsewhere``) on the other ranks. An error on
        rank 0 is raised on every rank instead of leaving the others waiting forever."""
        result, error = None, None
        if self.dist.is_main:
            try:
                result = fn()
            except MlraError as exc:
                error = exc
        if self.dist.enabled:
            flag = torch.tensor([0.0 if error else 1.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            if error is None and flag.item() < 1:
                raise MlraError("rank 0 failed during set-up (see its error message)")
        if error is not None:
            raise error
        if not self.dist.is_main and run_elsewhere:
            result = fn()
        return result

    def _prepare_out_dir(self, resumed_from: Path | None = None) -> None:
        """Make ``self.out`` ready for a fresh run (or for continuing the run in
        ``resumed_from``): refuse if it holds a run unless ``overwrite``, then clear it."""
        has_run = ckpt.holds_run(self.out)
        if has_run and not self.overwrite:
            if resumed_from is not None:
                raise ConfigError(
                    f"--out {self.out} already holds another training run; resuming "
                    f"{resumed_from} into it would replace its checkpoints. Choose an empty "
                    "--out, leave --out out to continue in place, or pass --overwrite"
                )
            raise ConfigError(
                f"{self.out} already holds a training run; continue it with --resume, or "
                "pass --overwrite to start again, or choose another --out"
            )
        if has_run:
            shutil.rmtree(self.out / ckpt.CHECKPOINTS, ignore_errors=True)
            (self.out / ckpt.LATEST).unlink(missing_ok=True)
        ckpt.clean_partial(self.out)
        (self.out / METRICS_FILE).unlink(missing_ok=True)

    def _resolve_data(self) -> DataSource:
        cfg = self.cfg
        return resolve_data(
            cfg.data, cfg.val_data, cfg.tokenizer, cfg.gpt2_file,
            prepare_dir=self.out / "data", progress=cfg.progress,
        )

    def _build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        with torch.device(self.device):
            model = Transformer(self.model_config)
        if self.resume_dir is not None:
            weights = self.resume_dir / WEIGHTS_FILE
            try:
                state = load_file(str(weights), device=str(self.device))
            except Exception as exc:
                raise CheckpointError(f"{weights} is corrupt or missing: {exc}") from exc
            load_state_checked(model, state, source=str(weights))
        self.raw_model = model
        self.n_params = sum(p.numel() for p in model.parameters())
        if cfg.compile:
            # Regional compilation: identical blocks share one compiled graph, so compile time
            # does not grow with depth (the embedding and loss stay eager).
            for block in model.layers:
                block.compile()
        wrapped: nn.Module = model
        self.ddp_module: nn.Module | None = None
        if cfg.fsdp and self.dist.enabled:
            from torch.distributed.fsdp import fully_shard

            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Parameters with a leading dimension of 1 (MLA's wkv_b) trip a harmless warning.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            wrapped = self.ddp_module = DDP(model, device_ids=ids, gradient_as_bucket_view=True)
        self.model = wrapped
        fused = self.device.type == "cuda" and not cfg.fsdp
        self.optimizer = build_optimizer(
            model, cfg.peak_lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps,
            decay_all=cfg.decay_all, fused=fused,
        )

    # ------------------------------------------------------------------ state io
    def _optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        osd = get_optimizer_state_dict(
            self.raw_model, self.optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {}
        if not self.dist.is_main:  # with several processes only rank 0 receives the full state
            return tensors, {}
        for fqn, entry in osd["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{fqn}/{key}"] = value
                else:
                    scalars[f"{fqn}/{key}"] = value
        groups = json.loads(json.dumps(osd["param_groups"], default=list))
        return tensors, {"param_groups": groups, "scalars": scalars}

    def _load_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        state: dict[str, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optim/"):
                fqn, key = name[len("optim/"):].rsplit("/", 1)
                state.setdefault(fqn, {})[key] = value
        for name, value in meta.get("scalars", {}).items():
            fqn, key = name.rsplit("/", 1)
            state.setdefault(fqn, {})[key] = value
        groups = meta["param_groups"]
        for g in groups:
            g["betas"] = tuple(g["betas"])
        try:
            set_optimizer_state_dict(
                self.raw_model, self.optimizer,
                optim_state_dict={"state": state, "param_groups": groups},
                options=StateDictOptions(full_state_dict=True),
            )
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.resume_dir}: optimizer state does not match the model: {exc}"
            ) from exc
        cfg = self.cfg
        for g in self.optimizer.param_groups:  # options given now win over saved ones
            g["betas"], g["eps"] = (cfg.beta1, cfg.beta2), cfg.eps
            if g["weight_decay"] > 0:
                g["weight_decay"] = cfg.weight_decay

    def _full_model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if not self.cfg.fsdp or not self.dist.enabled:
            return {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}
        return get_model_state_dict(
            self.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def save_checkpoint(self, step: int, val_loss: float | None) -> Path | None:
        """Write a checkpoint of the current state (collective; rank 0 writes)."""
        model_state = self._full_model_state()
        opt_tensors, opt_meta = self._optimizer_state()
        path = None
        if self.dist.is_main:
            tensors = dict(opt_tensors)
            tensors["rng/cpu"] = torch.get_rng_state()
            if self.device.type == "cuda":
                tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
            state = {
                "step": step, "samples": self.loader.samples,
                "tokens": self.loader.samples * self.seq_len,
                "loader": self.loader.state_dict(), "config": self.cfg.to_dict(),
                "world_size": self.dist.world_size, "val_loss": val_loss,
                "optimizer": opt_meta, "torch": torch.__version__, "time": time.time(),
            }
            mcfg = self.model_config

            def write_model(directory: Path) -> None:
                with torch.device("meta"):
                    m = Transformer(mcfg)
                m.load_state_dict(model_state, assign=True)
                save_model(m, directory, extra={"training": {"step": step, "run": str(self.out)}})

            path = ckpt.write_checkpoint(
                self.out, step, write_model, self.source.tokenizer, state, tensors,
                keep_last=self.cfg.keep_last,
            )
        barrier(self.dist)
        return path

    def _restore(self) -> int:
        assert self.resume_state is not None and self.resume_tensors is not None
        st = self.resume_state
        self._load_optimizer_state(self.resume_tensors, st["optimizer"])
        old_batch = st["loader"].get("global_batch")
        self.loader.load_state_dict(st["loader"])
        if old_batch != self.layout.global_batch:
            self.log(
                f"warning: global batch changed from {old_batch} to {self.layout.global_batch} "
                "sequences; training continues from the same data position but is no longer "
                "identical to an uninterrupted run"
            )
        if "rng/cpu" in self.resume_tensors:
            torch.set_rng_state(self.resume_tensors["rng/cpu"])
        if self.device.type == "cuda" and "rng/cuda" in self.resume_tensors:
            torch.cuda.set_rng_state(self.resume_tensors["rng/cuda"], self.device)
        return int(st["step"])

    # ------------------------------------------------------------------ maths
    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x).logits
        if self.cfg.compile:  # the fp32 cast fused into the reductions: no fp32 logits copy
            return compiled_token_cross_entropy()(logits, y)
        return token_cross_entropy(logits, y)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean next-token loss over the fixed validation slice (every rank takes a share)."""
        self.raw_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x, y, n_real in self.val_batches:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self.autocast:
                logits = self.raw_model(x).logits
            per_token = token_cross_entropy(logits, y, reduction="none")
            total[0] += per_token[:n_real].sum(dtype=torch.float64)
            total[1] += n_real * y.shape[1]
        all_reduce_sum(total, self.dist)
        self.raw_model.train()
        return float(total[0] / total[1])

    def _grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-step: gradients are all-reduced only on the last one."""
        if self.cfg.fsdp and self.dist.enabled:
            self.raw_model.set_requires_gradient_sync(enabled)
        elif self.ddp_module is not None and not enabled:
            return self.ddp_module.no_sync()
        return contextlib.nullcontext()

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimizer step; returns (mean loss over the global batch, gradient norm)."""
        cfg = self.cfg
        lr = lr_at(step, cfg.peak_lr, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self.loader.next_step()
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro):
            if self.device.type == "cuda":
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self._grad_sync(i == len(micro) - 1):
                with self.autocast:
                    loss = self._loss(self.model, x, y)
                if self.loss_hook is not None:
                    loss = self.loss_hook(step, loss)
                (loss / len(micro)).backward()
            loss_sum += loss.detach()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = clip_gradients(self.optimizer, self.raw_model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        mean_loss = all_reduce_sum(loss_sum / len(micro), self.dist) / self.dist.world_size
        loss_value, norm_value = torch.stack([mean_loss, grad_norm.float()]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            latest = ckpt.list_checkpoints(self.out)
            where = (f"the last good checkpoint is {latest[-1][1]} (resume with --resume, e.g. "
                     "with a lower --lr)") if latest else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"loss became {loss_value} (gradient norm {norm_value}) at step {step + 1}; "
                f"stopped without updating the weights; {where}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train to ``cfg.steps``; returns the result (on every rank)."""
        try:
            self._setup()
            return self._loop()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._lock.release()
            if hasattr(self, "dist"):
                teardown(self.dist)

    def _loop(self) -> TrainResult:
        cfg, main = self.cfg, self.dist.is_main
        start = 0
        if self.resume_dir is not None:
            start = self._restore()
            if main:
                self.metrics.truncate_after(start)
            self.log(f"resumed from {self.resume_dir} at step {start}")
        if start > cfg.steps:
            raise ConfigError(f"the checkpoint is at step {start}, beyond --steps {cfg.steps}")
        if main:
            self._write_run_file()
            tokens_per_step = self.layout.global_batch * self.seq_len
            self.log(
                f"training {cfg.model} ({cfg.size}, {self.n_params / 1e6:.2f}M parameters) on "
                f"{self.source.name} [{self.source.tokenizer.name} tokenizer, "
                f"{self.train_data.n_tokens:,} tokens] for {cfg.steps} steps x "
                f"{tokens_per_step:,} tokens; {self.dist.world_size} process(es) on "
                f"{self.device.type}, {self.precision}; output {self.out}"
            )
        val_curve: list[tuple[int, float]] = [
            (r["step"], r["loss"]) for r in self.metrics.rows() if r.get("split") == "val"
        ] if main else []
        val_step, val_loss = val_curve[-1] if val_curve else (None, None)
        if cfg.eval_interval and start == 0:
            val_step, val_loss = 0, self._eval_and_log(0, val_curve)
        self._bar = tqdm(
            total=cfg.steps, initial=start, desc=cfg.model, unit="step", dynamic_ncols=True,
            disable=not (main and cfg.progress), file=sys.stderr,
        )
        train_time, train_tokens, last_loss = 0.0, 0, None
        window_time, window_tokens = 0.0, 0
        ckpt_every = cfg.ckpt_interval if cfg.ckpt_interval is not None else (
            cfg.eval_interval or cfg.steps)
        checkpoint_path = None
        step = start
        while step < cfg.steps:
            t0 = time.perf_counter()
            loss, norm = self.train_step(step)
            dt = time.perf_counter() - t0
            step += 1
            tokens = self.layout.global_batch * self.seq_len
            train_time += dt
            train_tokens += tokens
            window_time += dt
            window_tokens += tokens
            last_loss = loss
            self._bar.update(1)
            if self._bar.disable and main:
                self._status(step, loss)
            if step % cfg.log_interval == 0 or step == cfg.steps:
                tps = window_tokens / max(window_time, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                if main:
                    self.metrics.log({
                        "step": step, "split": "train", "loss": loss, "lr": lr,
                        "grad_norm": norm, "tokens": self.loader.samples * self.seq_len,
                        "tokens_per_s": tps, "epoch": self.loader.epoch,
                    })
                self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                window_time, window_tokens = 0.0, 0
            if cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.steps):
                val_step, val_loss = step, self._eval_and_log(step, val_curve)
            if (ckpt_every and step % ckpt_every == 0) or step == cfg.steps:
                checkpoint_path = self.save_checkpoint(
                    step, val_loss if val_step == step else None)
                if main:
                    plot_run(self.metrics.rows(), self.out / "loss.png", title=self._title())
        self._bar.close()
        self._bar = None
        if main:
            if not plot_run(self.metrics.rows(), self.out / "loss.png", title=self._title()):
                self.log("note: matplotlib is not installed, so no loss.png was drawn "
                         "(pip install 'mlra[plot]')")
            if val_loss is not None and val_step == step:
                tail = f"validation loss {val_loss:.4f} (ppl {math.exp(val_loss):.2f})"
            elif val_loss is not None:
                tail = (f"no validation loss measured at step {step} (the last, "
                        f"{val_loss:.4f}, is of step {val_step})")
            else:
                tail = "no validation loss measured"
            self.log(f"done: step {step}; {tail}; checkpoint {checkpoint_path or self.out}")
        return TrainResult(
            out=self.out, step=step, params=self.n_params, model_config=self.model_config,
            train_tokens=train_tokens, tokens_per_s=train_tokens / max(train_time, 1e-9),
            train_seconds=train_time, final_train_loss=last_loss,
            final_val_loss=val_loss if val_step == step else None,
            val_curve=val_curve, checkpoint=checkpoint_path,
        )

    def _status(self, step: int, loss: float) -> None:
        """Without a progress bar: one line every :attr:`status_interval_s` seconds."""
        now = time.monotonic()
        if self._last_status is None:
            self._last_status = now
            return
        if now - self._last_status < self.status_interval_s:
            return
        self._last_status = now
        lr = self.optimizer.param_groups[0]["lr"]
        self.log(f"step {step}/{self.cfg.steps}: loss {loss:.4f}, lr {lr:.2e}, "
                 f"{self.loader.samples * self.seq_len:,} tokens seen")

    def _eval_and_log(self, step: int, curve: list[tuple[int, float]]) -> float:
        loss = self.evaluate()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"validation loss became {loss} at step {step}")
        curve.append((step, loss))
        if self.dist.is_main:
            self.metrics.log({"step": step, "split": "val", "loss": loss,
                              "ppl": math.exp(min(loss, 700)),
                              "tokens": self.loader.samples * self.seq_len})
            self.log(f"step {step}: validation loss {loss:.4f} (ppl {math.exp(min(loss, 700)):.2f}"
                     f", {self.val_windows * self.seq_len:,} tokens)")
        return loss

    def _title(self) -> str:
        return f"{self.cfg.model} ({self.cfg.size}) on {Path(self.source.name).name}"

    def _write_run_file(self) -> None:
        info = {
            "config": self.cfg.to_dict(), "model": self.model_config.to_dict(),
            "params": self.n_params, "data": {
                "name": self.source.name, "train": [str(p) for p in self.source.train],
                "val": [str(Path(p).resolve()) for p in self.source.val],
                "tokenizer": self.source.tokenizer.name,
                "train_tokens": self.train_data.n_tokens, "val_windows": self.val_windows,
            },
            "world_size": self.dist.world_size, "device": str(self.device),
            "precision": self.precision, "seq_len": self.seq_len,
            "global_batch": self.layout.global_batch, "torch": torch.__version__,
        }
        atomic_write_text(self.out / RUN_FILE, json.dumps(info, indent=1) + "\n")


def train(cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False,
          log: Callable[[str], None] | None = None, verify: bool = True) -> TrainResult:
    """Run one training job (library entry point of ``mlra train``); ``verify=False`` skips
    the checksum check of the checkpoint resumed from."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, log=log, verify=verify).run()
