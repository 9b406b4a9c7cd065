"""Command-line options shared by every command that takes a checkpoint.

Use ``add_checkpoint_args(parser)`` when building the sub-parser and
``mlra.load_checkpoint(args.checkpoint, **checkpoint_options(args), ...)`` in the command:
``--variant``, ``--no-latent-scaling`` and ``--no-verify`` then behave the same everywhere.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_checkpoint_args(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """Add the checkpoint path (``--checkpoint DIR``, or positional ``PATH``), ``--variant``,
    ``--no-latent-scaling`` and ``--no-verify``."""
    help_path = (
        "our model directory, a training run directory (its latest checkpoint), or an official "
        "Hugging Face-style checkpoint directory (e.g. the published Soughing/MLRA files)"
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
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false",
        help="skip checking our checkpoints' files against the checksums written with them "
        "(saves one extra read of the weights)",
    )


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`mlra.load_checkpoint` that the options added by
    :func:`add_checkpoint_args` set."""
    return {
        "variant": args.variant,
        "latent_scaling": False if getattr(args, "no_latent_scaling", False) else None,
        "verify": getattr(args, "verify", True),
    }
