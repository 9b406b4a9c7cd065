"""``mlra eval ppl`` (perplexity over token shards) and ``mlra eval tasks`` (zero-shot
lm-evaluation-harness tasks), on any checkpoint ``mlra.load_checkpoint`` accepts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mlra.atomic import atomic_write_text
from mlra.checkpoints import checkpoint_tokenizer, load_checkpoint
from mlra.checkpoints.cli import add_checkpoint_args, checkpoint_options
from mlra.data.tokenizers import GPT2Tokenizer, Tokenizer
from mlra.devices import parse_device, parse_dtype
from mlra.errors import ConfigError, DataError
from mlra.parallel.cli import add_tp_arg, report_ranks, run_command
from mlra.parallel.runtime import TPContext

EXAMPLES_PPL = """examples:
  mlra eval ppl --checkpoint runs/tiny                  # the run's own validation shards
  mlra eval ppl --checkpoint runs/tiny --data shards/   # validation shards of a prepared dir
  mlra eval ppl --checkpoint MLRA-4/ --data eval_datasets/ --tokens 1e8
  mlra eval ppl --checkpoint runs/tiny --tp 2 --device cpu
"""

EXAMPLES_TASKS = """examples:
  mlra eval tasks --checkpoint MLRA-4/                       # the paper's seven tasks
  mlra eval tasks --checkpoint runs/tiny --tasks arc_easy,piqa --limit 100
  mlra eval tasks --checkpoint runs/tiny --tasks-dir my_tasks/ --tasks my_task
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity over token shards, zero-shot tasks through lm-eval",
        description="Evaluate a checkpoint: `mlra eval ppl` or `mlra eval tasks`.",
        epilog=EXAMPLES_PPL + "\n" + EXAMPLES_TASKS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="eval_command", metavar="{ppl,tasks}")
    sub.required = True

    ppl = sub.add_parser(
        "ppl", help="perplexity over token shards (non-overlapping windows, as the paper)",
        description=(
            "Loss and perplexity per token set. Each shard (official format: 1024-byte header "
            "+ uint16 GPT-2 ids, e.g. the published eval_datasets/*.bin) is cut into "
            "consecutive non-overlapping windows of --block-size tokens, without context "
            "carried between windows; the loss is the mean over all predicted tokens. Without "
            "--data: the validation shards of the training run the checkpoint belongs to (as "
            "named in its run.json), else the built-in corpus's validation split tokenized with "
            "the checkpoint's tokenizer. A directory given to --data contributes its "
            "validation shards only when it also holds training shards (--all-shards: all)."
        ),
        epilog=EXAMPLES_PPL, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(ppl)
    ppl.add_argument("--data", nargs="+", default=None, metavar="SHARD",
                     help="token shards (.bin) or directories of them; one result per file")
    ppl.add_argument("--all-shards", action="store_true",
                     help="also score the training shards (*train*.bin) of a --data directory")
    ppl.add_argument("--tokens", type=_count, default=None, metavar="N",
                     help="evaluate at most N predicted tokens per set (e.g. 1e8, the paper's "
                     "budget); default: the whole set")
    ppl.add_argument("--block-size", type=int, default=None,
                     help="window length (default: the model's context, at most 2048 -- the "
                     "paper's value)")
    _add_runtime_args(ppl, default_batch="6 on GPU, 1 on CPU")
    ppl.add_argument("--json", action="store_true", help="print the results as JSON")
    add_tp_arg(ppl)
    ppl.set_defaults(func=run_ppl)

    tasks = sub.add_parser(
        "tasks", help="zero-shot lm-evaluation-harness tasks (the paper's seven by default)",
        description=(
            "Run lm-evaluation-harness tasks on the checkpoint, zero-shot, and print the "
            "paper's metric per task: acc_norm for ARC-E/C, OpenBookQA, HellaSwag and PIQA, "
            "acc for BoolQ and Winogrande. Needs the optional extra: pip install 'mlra[eval]'. "
            "Runs offline: task data must be in the local Hugging Face datasets cache (fill it "
            "once with --allow-download on a machine with network), or come from --tasks-dir."
        ),
        epilog=EXAMPLES_TASKS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(tasks)
    tasks.add_argument("--tasks", default=None,
                       help="comma-separated lm-eval task names (default: arc_easy, "
                       "arc_challenge, openbookqa, boolq, hellaswag, winogrande, piqa)")
    tasks.add_argument("--limit", type=float, default=None,
                       help="at most this many examples per task (a fraction if < 1)")
    tasks.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples (default 0)")
    tasks.add_argument("--tasks-dir", default=None, metavar="DIR",
                       help="extra task YAMLs (e.g. tasks over local JSON/JSONL data)")
    tasks.add_argument("--max-length", type=int, default=None,
                       help="longest input in tokens (default: the model's context)")
    tasks.add_argument("--allow-download", action="store_true",
                       help="let lm-eval download missing task data (default: offline)")
    _add_runtime_args(tasks, default_batch="8")
    tasks.add_argument("--output", default=None, metavar="FILE",
                       help="write the full lm-eval metrics as JSON to FILE")
    tasks.add_argument("--json", action="store_true", help="print the results as JSON")
    tasks.set_defaults(func=run_tasks_command)


def _count(text: str) -> int:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a token count such as 100000000 or 1e8, "
                                         f"got {text!r}") from exc
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(value)


def _add_runtime_args(p: argparse.ArgumentParser, default_batch: str) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sequences per forward (default: {default_batch})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if "
                   "available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="autocast compute dtype; weights stay as loaded (default: bfloat16 on "
                   "GPU, as the official evaluation; float32 on CPU)")
    p.add_argument("--tokenizer", default=None, metavar="byte|gpt2|PATH",
                   help="tokenizer (default: the checkpoint's; GPT-2 BPE for official "
                   "checkpoints)")
    p.add_argument("--gpt2-file", default=None, metavar="PATH",
                   help="local GPT-2 vocabulary (r50k_base.tiktoken, or a directory with "
                   "vocab.bpe + encoder.json); default $MLRA_GPT2_BPE or ~/.cache/mlra/gpt2")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _runtime(args: argparse.Namespace) -> tuple[torch.device, torch.dtype | None]:
    device = parse_device(args.device)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    return device, parse_dtype(args.dtype, device)


def _tokenizer(args: argparse.Namespace) -> Tokenizer:
    tok = checkpoint_tokenizer(args.checkpoint, args.tokenizer, args.gpt2_file)
    if isinstance(tok, GPT2Tokenizer):
        tok.check()  # fail now, with instructions, if the vocabulary file is missing
    return tok


def _load(args: argparse.Namespace, ctx: TPContext) -> torch.nn.Module:
    """The checkpoint's model (this rank's shard under --tp), with a line about it."""
    if ctx.is_main:
        print(f"loading {args.checkpoint} ...", file=sys.stderr)
    model = load_checkpoint(args.checkpoint, **checkpoint_options(args), device=ctx.device,
                            tp=ctx)
    report_ranks(model, ctx)
    if ctx.is_main:
        print(f"model: {model.config.name} ({model.num_params() / 1e6:.1f}M parameters) on "
              f"{ctx.device}", file=sys.stderr)
    return model


def _run_validation_shards(checkpoint: str) -> list[Path]:
    """The validation shards of the training run ``checkpoint`` belongs to (from its
    ``run.json``), when they still exist; else []."""
    from mlra.checkpoints import resolve_checkpoint_dir
    from mlra.checkpoints.runs import RUN_FILE, run_dir_of

    _, directory = resolve_checkpoint_dir(checkpoint)
    run_file = run_dir_of(directory) / RUN_FILE
    try:
        val = json.loads(run_file.read_text())["data"]["val"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    paths = [Path(p) for p in val]
    return paths if paths and all(p.is_file() for p in paths) else []


def run_ppl(args: argparse.Namespace) -> int:
    _runtime(args)  # option errors before any process starts
    return run_command(args, _ppl)


def _ppl(ctx: TPContext, args: argparse.Namespace) -> int:
    from mlra.evaluate.perplexity import evaluate_shards, expand_data_paths, format_table

    _, autocast = _runtime(args)
    device = ctx.device
    model = _load(args, ctx)
    cfg = model.config
    block = min(cfg.max_seq_len, 2048) if args.block_size is None else args.block_size
    if block < 1:
        raise ConfigError(f"--block-size must be positive, got {block}")
    say = (lambda msg: print(msg, file=sys.stderr)) if ctx.is_main else (lambda msg: None)
    if block > cfg.max_seq_len:
        say(f"warning: --block-size {block} exceeds the model's context of {cfg.max_seq_len} "
            "tokens")
    batch = (6 if device.type == "cuda" else 1) if args.batch_size is None else args.batch_size
    notes: list[str] = []
    if args.data:
        paths = expand_data_paths(args.data, include_train=args.all_shards, notes=notes)
    elif own := _run_validation_shards(args.checkpoint):
        paths = own
        notes.append(f"no --data: scoring the validation shards of the run the checkpoint "
                     f"belongs to ({', '.join(str(p) for p in own)})")
    else:
        from mlra.data.corpus import builtin_validation_shard

        tok = _tokenizer(args)
        if tok.vocab_size > cfg.vocab_size:
            raise DataError(f"tokenizer {tok.name} ({tok.vocab_size} ids) does not fit the "
                            f"model's vocabulary of {cfg.vocab_size}")
        notes.append(f"no --data: using the built-in corpus's validation split ({tok.name} "
                     "tokens)")
        paths = [builtin_validation_shard(tok)]
    for note in notes:
        say(note)
    results = evaluate_shards(
        model, paths, block_size=block, batch_size=batch, max_tokens=args.tokens,
        autocast_dtype=autocast, progress=ctx.is_main and not args.no_progress,
    )
    if not ctx.is_main:
        return 0
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "model": cfg.name,
                          "block_size": block, "sets": [r.to_dict() for r in results]},
                         indent=2))
    else:
        print(f"perplexity of {cfg.name} ({args.checkpoint}), windows of {block} tokens")
        print(format_table(results))
    return 0


def run_tasks_command(args: argparse.Namespace) -> int:
    try:
        from mlra.evaluate.harness import (
            PAPER_TASKS,
            MlraLM,
            format_results,
            prepare_tasks,
            run_tasks,
        )
    except ImportError as exc:
        raise ConfigError(
            f"`mlra eval tasks` needs lm-evaluation-harness ({exc.name or exc} is missing): "
            "pip install 'mlra[eval]'"
        ) from exc
    names = PAPER_TASKS if not args.tasks else tuple(
        t.strip() for t in args.tasks.split(",") if t.strip()
    )
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {args.limit}")
    limit = None if args.limit is None else (
        args.limit if args.limit < 1 else int(args.limit)
    )
    device, autocast = _runtime(args)
    tok = _tokenizer(args)
    offline = not args.allow_download
    manager = prepare_tasks(names, args.tasks_dir, offline)  # task names and data, before loading
    model = _load(args, TPContext(0, 1, device, None))
    if tok.vocab_size > model.config.vocab_size:
        raise DataError(f"tokenizer {tok.name} ({tok.vocab_size} ids) does not fit the model's "
                        f"vocabulary of {model.config.vocab_size}")
    batch = 8 if args.batch_size is None else args.batch_size
    lm = MlraLM(model, tok, batch_size=batch, max_length=args.max_length,
                autocast_dtype=autocast, progress=not args.no_progress)
    results = run_tasks(lm, names, limit=limit, num_fewshot=args.num_fewshot,
                        tasks_dir=args.tasks_dir, offline=offline, manager=manager)
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        shots = f"{args.num_fewshot}-shot"
        print(f"{shots} tasks on {model.config.name} ({args.checkpoint})")
        print(format_results(results))
    return 0
