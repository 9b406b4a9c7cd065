"""``mlra convert``: write any supported checkpoint (e.g. a published official one) in our
format (config.json + model.safetensors + tokenizer.json), loadable without the original."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mlra.atomic import atomic_write
from mlra.checkpoints import checkpoint_kind, load_checkpoint, resolve_checkpoint_dir
from mlra.checkpoints.cli import add_checkpoint_args, checkpoint_options
from mlra.checkpoints.format import CONFIG_FILE, WEIGHTS_FILE, save_model
from mlra.data.tokenizers import TOKENIZER_FILE, GPT2Tokenizer
from mlra.devices import parse_dtype
from mlra.errors import CheckpointError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (e.g. an official one) to our safetensors format",
        description=(
            "Load a checkpoint -- an official Hugging Face-style directory (variant inferred "
            "from its weights), a training run or one of our model directories -- and write it "
            "as our model directory: config.json + model.safetensors (+ tokenizer.json). The "
            "result loads with `mlra.load_checkpoint(DIR)` and every command, without the "
            "original files."
        ),
        epilog="examples:\n"
               "  mlra convert MLRA-4/ --out mlra4-ours          # an official checkpoint\n"
               "  mlra convert MLA-no-scale/ --variant mla_no_scale --out mla-ns\n"
               "  mlra convert runs/tiny --out tiny-bf16 --dtype bfloat16\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(p, positional=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="store the weights in this dtype (default: as loaded, fp32 for official)")
    p.add_argument("--force", action="store_true",
                   help="overwrite a model already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    kind = checkpoint_kind(args.checkpoint)
    _, source = resolve_checkpoint_dir(args.checkpoint)
    if out.resolve() == source.resolve():
        raise CheckpointError(f"--out {out} is the checkpoint being converted; choose another")
    if (out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists():
        if not args.force:
            raise CheckpointError(f"{out} already holds a model; pass --force to overwrite it")
    model = load_checkpoint(args.checkpoint, **checkpoint_options(args),
                            dtype=parse_dtype(args.dtype))
    extra = {"converted_from": str(source), "source_format": kind}
    save_model(model, out, extra=extra)
    if kind == "official":  # the published models use GPT-2 BPE (vocabulary file found later)
        GPT2Tokenizer().save(out)
    elif (source / TOKENIZER_FILE).is_file():
        atomic_write(out / TOKENIZER_FILE, lambda p: shutil.copyfile(source / TOKENIZER_FILE, p))
    cfg = model.config
    print(
        f"wrote {out}: {cfg.name} ({cfg.family} attention, {cfg.n_layers} layers, "
        f"d_model {cfg.d_model}, {model.num_params() / 1e6:.1f}M parameters)"
    )
    return 0
