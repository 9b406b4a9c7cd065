"""``mlra data``: prepare token shards from local text, and inspect shards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlra.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data", help="prepare token shards from text; inspect shards",
        epilog="examples:\n  mlra data prepare my_book.txt --out data/book\n"
               "  mlra data info data/book\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    prep = sub.add_parser(
        "prepare",
        help="text / JSONL / directories -> train and validation shards",
        description=(
            "Tokenize local text into train/validation shards in the official format "
            "(256 x int32 header, uint16 tokens) plus tokenizer.json and meta.json. A text "
            "file is one document, a JSONL file one document per line, a directory every "
            "text/JSONL file inside it; 'builtin' is the built-in corpus. Every k-th chunk "
            "(a few KB, cut at paragraph breaks) goes to validation. Nothing is downloaded. "
            "Input must be valid UTF-8 (or --encoding); invalid bytes are refused with their "
            "offset unless --errors replace. Binary files are refused."
        ),
        epilog="examples:\n"
               "  mlra data prepare my_book.txt --out data/book            # byte tokenizer\n"
               "  mlra data prepare docs/ notes.jsonl --out data/mine --tokenizer bpe\n"
               "  mlra data prepare old.txt --encoding latin-1 --out data/old\n"
               "  mlra data prepare scraped.txt --errors replace --out data/scraped\n"
               "  mlra data prepare train.txt --val-input held_out.txt --out data/split\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="text/JSONL files (optionally .gz), directories, or 'builtin'")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--tokenizer", default="byte",
                      help="byte (default; needs nothing), gpt2 (tiktoken + a local vocabulary "
                           "file), bpe (trained here with the tokenizers library), or a path "
                           "to a tokenizer.json")
    prep.add_argument("--vocab-size", type=int, default=8192,
                      help="vocabulary of a trained BPE, end-of-text included (default 8192)")
    prep.add_argument("--val-fraction", type=float, default=0.01,
                      help="share of the text held out for validation (default 0.01; small "
                           "inputs get up to 10%% so validation has ~64 KB)")
    prep.add_argument("--val-input", action="append", default=None, metavar="INPUT",
                      help="use these inputs as the validation set instead (repeatable)")
    prep.add_argument("--text-field", default="text", help="JSONL field holding the text")
    prep.add_argument("--encoding", default="utf-8",
                      help="encoding of the input files (default utf-8; e.g. latin-1, cp1252)")
    prep.add_argument("--errors", default="strict", choices=["strict", "replace"],
                      help="invalid bytes: strict (default) refuses the file naming the byte "
                           "offset; replace puts U+FFFD in their place and reports how many")
    prep.add_argument("--shard-tokens", type=int, default=100_000_000,
                      help="tokens per shard (default 1e8, as the official scripts)")
    prep.add_argument("--gpt2-file", default=None,
                      help="GPT-2 vocabulary file or directory (also $MLRA_GPT2_BPE)")
    prep.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=run_prepare)

    info = sub.add_parser(
        "info", help="header, token count and id range of shards",
        epilog="examples:\n  mlra data info data/book\n"
               "  mlra data info fineweb/val_000000.bin --vocab-size 50257 --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("paths", nargs="+", metavar="PATH", help="shard files or directories")
    info.add_argument("--vocab-size", type=int, default=None,
                      help="also check every id is below this")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=run_info)


def run_prepare(args: argparse.Namespace) -> int:
    from mlra.data.prepare import prepare

    result = prepare(
        args.inputs, args.out, args.tokenizer, vocab_size=args.vocab_size,
        val_fraction=args.val_fraction, val_inputs=args.val_input, text_field=args.text_field,
        shard_tokens=args.shard_tokens, gpt2_file=args.gpt2_file, overwrite=args.overwrite,
        progress=not args.no_progress, encoding=args.encoding, errors=args.errors,
    )
    print(result.summary())
    if result.replaced_bytes:
        print(f"note: {result.replaced_bytes:,} invalid {args.encoding} byte(s) were replaced "
              "with U+FFFD (--errors replace)")
    if result.val_note:
        print(f"note: {result.val_note}")
    print(f"train on it with: mlra train --data {result.out} --out runs/mine")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import numpy as np

    from mlra.data.shards import read_shard

    files: list[Path] = []
    for spec in args.paths:
        p = Path(spec)
        if p.is_dir():
            found = sorted(p.glob("*.bin"))
            if not found:
                raise DataError(f"{p} holds no .bin shards")
            files += found
        else:
            files.append(p)
    rows = []
    for f in files:
        tokens = read_shard(f, args.vocab_size)
        hi = int(np.max(tokens)) if tokens.size else None
        rows.append({"path": str(f), "tokens": int(tokens.size), "max_id": hi})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['path']}: {r['tokens']:,} tokens, max id {r['max_id']}")
        print(f"total: {sum(r['tokens'] for r in rows):,} tokens in {len(rows)} shard(s)")
    return 0
