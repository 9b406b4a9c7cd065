"""``mlra compare``: the README's main job -- train MHA, GQA, MLA, GLA-2, MLRA-2 and MLRA-4 at
the tiny preset on the built-in corpus and print one table."""

from __future__ import annotations

import argparse

from mlra.config import SIZES, VARIANTS
from mlra.train.compare import DEFAULT_VARIANTS, CompareConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    d = CompareConfig()
    p = subparsers.add_parser(
        "compare",
        help="train several attention variants on one budget and tabulate ppl, params, KV, speed",
        description=(
            "Train each variant with the same seed(s), data and token budget, then print one "
            "table: validation perplexity, parameter count, KV cache per token per layer (total "
            "and per device at --tp), training tokens/s. Writes results.md, results.json and "
            "val_curves.png to --out, and each run to --out/VARIANT. Defaults finish in about "
            "7 minutes on a 2-core CPU; a GPU is used when present. Finished runs with the "
            "same settings are reused (--force retrains). One comparison writes to --out at "
            "a time (a second is refused naming the first's pid)."
        ),
        epilog="examples:\n  mlra compare                                   # six variants, tiny\n"
               "  mlra compare --variants mla,mlra_4 --steps 200 --out runs/cmp\n"
               "  mlra compare --seeds 3                         # mean ± spread over 3 seeds\n"
               "  mlra compare --variants all --force --no-progress\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, or 'all' (default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--size", default=d.size, choices=SIZES, help="preset size (default tiny)")
    p.add_argument("--data", default=d.data,
                   help="'builtin' (default) or any --data of `mlra train`")
    p.add_argument("--tokenizer", default=None, help="tokenizer (as for `mlra train`)")
    p.add_argument("--out", default=d.out, help=f"output directory (default {d.out})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"optimizer steps per variant (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"sequences per step (default {d.batch_size})")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help=f"tokens per sequence (default {d.seq_len})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"warm-up steps (default {d.warmup_steps})")
    p.add_argument("--eval-interval", type=int, default=d.eval_interval,
                   help=f"validate every N steps (default {d.eval_interval})")
    p.add_argument("--val-tokens", type=int, default=d.val_tokens,
                   help=f"fixed validation slice in tokens (default {d.val_tokens})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    p.add_argument("--seeds", type=int, default=d.seeds,
                   help="seeds per variant: --seed, --seed+1, ... (default 1); with 2 or more "
                        "the table shows mean ± std and range of val ppl and says which gaps "
                        "exceed the measured seed noise (N times the training time)")
    p.add_argument("--tp", type=int, default=d.tp,
                   help=f"TP degree of the per-device KV column (default {d.tp})")
    p.add_argument("--device", default=d.device, help="auto (default), cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--workers", type=int, default=None,
                   help="variants trained side by side (default: one per CPU core with one "
                        "thread each on CPU; 1 on GPU)")
    p.add_argument("--force", action="store_true", help="retrain variants already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlra.train.compare import run_compare

    variants = VARIANTS if args.variants == "all" else tuple(
        v.strip().lower().replace("-", "_") for v in args.variants.split(",") if v.strip()
    )
    cc = CompareConfig(
        variants=variants, size=args.size, data=args.data, tokenizer=args.tokenizer,
        out=args.out, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        lr=args.lr, warmup_steps=args.warmup_steps, eval_interval=args.eval_interval,
        val_tokens=args.val_tokens, seed=args.seed, tp=args.tp, device=args.device,
        compile=args.compile, progress=not args.no_progress, force=args.force,
        workers=args.workers, seeds=args.seeds,
    )
    for name in ("steps", "batch_size", "seq_len", "val_tokens", "seeds"):
        value = getattr(cc, name)
        if value is not None and value < 1:
            from mlra.errors import ConfigError

            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer")
    run_compare(cc)
    return 0
