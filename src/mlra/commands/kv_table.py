"""``mlra kv-table``: KV cache per token, in total and per device under tensor parallelism."""

from __future__ import annotations

import argparse
import json

from mlra.config import _SHAPES, SIZES, VARIANTS, ModelConfig
from mlra.errors import ConfigError
from mlra.kv_accounting import TP_DEGREES, KVRow, kv_rows, paper_decode_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kv-table",
        help="KV cache per token per layer, total and per device at TP 1/2/4/8",
        description=(
            "Cache elements per token per layer for every variant, in total and per device "
            "under tensor parallelism (the paper's section 2.1), with the arithmetic "
            "intensity of decoding. Without --model/--size: the paper's decoding configuration "
            "(64 query heads, head dim 128, latent 512, rope 64, GQA with 8 KV heads)."
        ),
        epilog="examples:\n  mlra kv-table\n  mlra kv-table --model mla,mlra_4 --tp 1,8\n"
               "  mlra kv-table --size tiny --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None,
                   help=f"variant(s), comma-separated, or 'all' ({', '.join(VARIANTS)})")
    p.add_argument("--size", default=None, choices=SIZES, help="preset size (default: paper)")
    p.add_argument("--tp", default=",".join(map(str, TP_DEGREES)),
                   help="TP degrees, comma-separated (default 1,2,4,8)")
    p.add_argument("--json", action="store_true", help="print machine-readable rows")
    p.set_defaults(func=run)


def _parse_degrees(text: str) -> tuple[int, ...]:
    try:
        degrees = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ConfigError(f"--tp must be comma-separated integers, got {text!r}") from exc
    if not degrees or any(t < 1 for t in degrees):
        raise ConfigError(f"--tp degrees must be positive integers, got {text!r}")
    return degrees


def run(args: argparse.Namespace) -> int:
    degrees = _parse_degrees(args.tp)
    if args.model is None and args.size is None:
        rows = paper_decode_rows(degrees)
        title = "paper decoding configuration: 64 query heads, d_h 128, latent 512, rope 64"
    else:
        size = args.size or "paper"
        names = VARIANTS if args.model in (None, "all") else tuple(
            n.strip() for n in args.model.split(",") if n.strip()
        )
        cfgs = {n: ModelConfig.preset(n, size=size) for n in names}
        rows = kv_rows(cfgs, _SHAPES[size]["head_dim"], degrees)
        title = f"presets at size {size!r} (d_h = {_SHAPES[size]['head_dim']})"
    if not rows:
        raise ConfigError(f"no variant can be split into {args.tp} tensor-parallel ways at this "
                          "size; ask for smaller degrees (--tp 1,2,4)")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(format_table(rows, degrees, title))
    return 0


def format_table(rows: list[KVRow], degrees: tuple[int, ...], title: str) -> str:
    """A Markdown table: per-device cache in units of d_h per TP degree, plus AI."""
    by_variant: dict[str, dict[int, KVRow]] = {}
    for r in rows:
        by_variant.setdefault(r.variant, {})[r.tp] = r
    head = ["variant", "total (d_h)"] + [f"TP={t} (d_h)" for t in degrees]
    head += [f"AI TP={t}" for t in degrees]
    lines = [f"KV cache per token per layer, {title}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per_tp in by_variant.items():
        first = next(iter(per_tp.values()))
        cells = [name, f"{first.d_h_total:g}"]
        cells += [f"{per_tp[t].d_h_per_device:g}" if t in per_tp else "-" for t in degrees]
        cells += [f"{per_tp[t].arithmetic_intensity:g}" if t in per_tp else "-" for t in degrees]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "AI: FLOPs per byte of bf16 cache read per decoded token on one device "
              "(absorbed decoding for MLA/GLA/MLRA). Per-device numbers are what a rank of the "
              "tensor-parallel plan allocates; '-': the variant cannot be split that many ways."]
    return "\n".join(lines)
