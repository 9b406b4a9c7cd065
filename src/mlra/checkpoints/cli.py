"""Command-line options shared by every command that takes a checkpoint.

Use ``add_checkpoint_args(parser)`` when building the sub-parser and ``load_from_args(args)``
in the command: both ``--variant`` and ``--no-latent-scaling`` then behave the same everywhere.
"""

from __future__ import annotations

import argparse

import torch

from mlra.errors import ConfigError
from mlra.model import Transformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_checkpoint_args(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """Add the checkpoint path (``--checkpoint DIR``, or positional ``PATH``), ``--variant`` and
    ``--no-latent-scaling``."""
    help_path = (
        "our model directory, a training run directory, or an official Hugging Face-style "
        "checkpoint directory (e.g. the published Soughing/MLRA files)"
    )
    if positional:
        parser.add_argument("checkpoint", metavar="PATH", help=help_path)
    else:
        parser.add_argument("--checkpoint", required=True, metavar="DIR", help=help_path)
    parser.add_argument(
        "--variant", default=None,
        help="official checkpoints: the variant (mha, mqa, gqa, gta, mfa, tpa, mla, gla_2, "
        "gla_4, mlra_2, mlra_4, optionally with _gated / _no_scale). Inferred from the weights "
        "when omitted; when given it must match them. Needed only for the no-scale ablations, "
        "whose weights look like the scaled models (e.g. --variant mla_no_scale)",
    )
    parser.add_argument(
        "--no-latent-scaling", action="store_true",
        help="official MLA/GLA/MLRA checkpoints of the no-scale ablation (same as the "
        "_no_scale variant suffix)",
    )


def default_device() -> str:
    """``cuda`` when available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``float32``/``bfloat16``/``float16`` -> torch dtype (None stays None)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_from_args(
    args: argparse.Namespace,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Transformer:
    """The model named by the options added with :func:`add_checkpoint_args`."""
    from mlra.checkpoints import load_checkpoint

    return load_checkpoint(
        args.checkpoint,
        variant=args.variant,
        device=device,
        dtype=dtype,
        latent_scaling=False if getattr(args, "no_latent_scaling", False) else None,
    )
