"""``mlra train``: pretrain a model on the built-in corpus, your own text, or token shards.

Options come from (lowest to highest priority): defaults, the saved run config when resuming,
``--config FILE`` (JSON or TOML, keys are option names), then the command line.

Examples:
  mlra train --model mlra_4 --size tiny --steps 500 --out runs/tiny
  mlra train --out runs/tiny --resume                     # continue after an interruption
  mlra train --data my_book.txt --out runs/book            # prepares OUT/data, byte tokenizer
  torchrun --nproc-per-node 8 -m mlra.cli train --size 1b --data fineweb-edu100B/ --out r1b

The run directory holds metrics.jsonl, loss.png, run.json and checkpoints/step_*/ (latest
named by OUT/latest). --resume continues bitwise-exactly if the model, data, --seq-len,
--seed and the global batch (batch size x grad accum x processes) are unchanged; the number
of processes may change as long as the global batch stays the same. A larger --steps on
resume extends the run (the cosine schedule is then stretched from that point on).
--resume PATH --out OTHER continues run PATH into OTHER (PATH is left untouched); OTHER must
not already hold a run unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from mlra.checkpoints import runs as ckpt
from mlra.config import SIZES, VARIANTS
from mlra.errors import CheckpointError, ConfigError
from mlra.train.config import TrainConfig, load_config_file, parse_override

HELP = {
    "model": f"attention variant ({', '.join(VARIANTS)}); default mlra_4",
    "size": f"preset size ({', '.join(SIZES)}); default tiny",
    "data": "'builtin' (default: the built-in corpus), a directory of shards (*train*.bin, "
            "*val*.bin; e.g. from `mlra data prepare` or the official FineWeb-Edu shards), "
            ".bin files/globs, or one text/JSONL file (prepared into OUT/data)",
    "val_data": "validation shards (file, glob or directory) if not inside --data",
    "tokenizer": "byte, gpt2 or a tokenizer file path (default: the data's tokenizer, "
                 "else byte for text/builtin, gpt2 for bare shards)",
    "gpt2_file": "local GPT-2 vocabulary (r50k_base.tiktoken or a dir with vocab.bpe + "
                 "encoder.json); also $MLRA_GPT2_BPE",
    "out": "run directory (default runs/MODEL-SIZE)",
    "steps": "optimizer steps in the whole run (default 1000)",
    "batch_size": "sequences per micro-batch per process (default 16)",
    "grad_accum": "micro-batches per optimizer step (default 1)",
    "seq_len": "tokens per sequence (default: the model's context)",
    "lr": "peak learning rate (default by size: tiny 1e-3, small 6e-4, 1b 3e-4, paper 1.6e-4)",
    "min_lr_ratio": "final learning rate as a fraction of the peak (default 0.1)",
    "warmup_steps": "linear warm-up steps (default 2%% of --steps)",
    "weight_decay": "AdamW weight decay (default 0.1)",
    "decay_all": "decay every parameter, as the paper does (default: weight matrices only)",
    "beta1": "AdamW beta1 (0.9)", "beta2": "AdamW beta2 (0.95)", "eps": "AdamW eps (1e-8)",
    "grad_clip": "clip the global gradient norm (default 1.0; 0 disables)",
    "eval_interval": "validate every N steps on a fixed slice (default 100; 0 disables)",
    "val_tokens": "size of the fixed validation slice in tokens (default 262144)",
    "ckpt_interval": "checkpoint every N steps (default: every eval; always at the end)",
    "keep_last": "checkpoints kept (default 3)",
    "log_interval": "log training metrics every N steps (default 10)",
    "seed": "seed of the initial weights and the data order (default 1234)",
    "shuffle": "shuffle the training windows each epoch (default on)",
    "device": "auto (default: CUDA when present), cpu, cuda",
    "dtype": "auto (default: bf16 autocast on GPU, fp32 on CPU), fp32, bf16",
    "compile": "torch.compile each block and the loss (faster GPU steps after a start-up "
               "compilation; the loss then makes no fp32 copy of the logits)",
    "fsdp": "shard parameters with FSDP under torchrun (default: DDP)",
    "progress": "progress bar (default on)",
}


def _plain_type(hint: Any) -> type:
    """``int | None`` -> ``int``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="pretrain a model (CPU, GPU, or torchrun DDP/FSDP), with exact resume",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="JSON/TOML file of options")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name == "model_overrides":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _plain_type(hints[f.name])
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=HELP.get(f.name))
        else:
            p.add_argument(flag, dest=f.name, type=kind, default=None,
                           help=HELP.get(f.name), metavar=f.name.upper())
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set d_model=256 (repeatable)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue the run in --out (or the run/checkpoint PATH) exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="start again even if --out already holds a run (with --resume PATH: "
                        "replace the run in a different --out)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="resume without checking the checkpoint's files against their checksums "
                   "(saves reading them once more)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved options as JSON and exit")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The run config from defaults < saved run < --config < command line; and the checkpoint
    to resume from (None for a fresh run)."""
    explicit = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                if f.name != "model_overrides" and getattr(args, f.name, None) is not None}
    from_file = load_config_file(args.config) if args.config else {}
    overrides = dict(from_file.pop("model_overrides", {}) or {})
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    merged: dict[str, Any] = {}
    resume_dir = None
    if args.resume is not None:
        target = Path(args.resume) if args.resume else Path(
            explicit.get("out") or from_file.get("out") or "")
        if not str(target):
            raise ConfigError("--resume needs --out RUN_DIR or --resume PATH")
        try:
            resume_dir = ckpt.resolve_checkpoint(target)
        except CheckpointError as exc:
            raise CheckpointError(f"nothing to resume: {exc}") from exc
        state, _ = ckpt.read_trainer_state(resume_dir, verify=False)  # the trainer verifies
        merged.update(state.get("config", {}))
        # The resumed run's folder, unless --out names another (which must not hold a run;
        # the trainer checks).
        merged["out"] = str(ckpt.run_dir_of(resume_dir if args.resume else target))
    merged.update(from_file)
    merged.update(explicit)
    if overrides or "model_overrides" not in merged:
        merged["model_overrides"] = {**merged.get("model_overrides", {}), **overrides}
    cfg = TrainConfig.from_dict(merged, source=args.config or "options")
    if cfg.out is None:
        cfg.out = f"runs/{cfg.model}-{cfg.size}"
    return cfg, resume_dir


def run(args: argparse.Namespace) -> int:
    cfg, resume_dir = build_config(args)
    # Checks that need no data: the model config and options are valid.
    cfg.model_config()
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from mlra.train.trainer import train

    train(cfg, resume=resume_dir, overwrite=args.overwrite, verify=args.verify)
    return 0
