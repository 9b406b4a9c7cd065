"""``mlra generate``: text (or token ids) from a checkpoint through the paged KV cache."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from mlra.checkpoints import load_checkpoint
from mlra.checkpoints.cli import add_checkpoint_args, checkpoint_options
from mlra.devices import DTYPES, parse_device, parse_dtype
from mlra.errors import ConfigError, DataError
from mlra.parallel.cli import add_tp_arg, cache_report, report_ranks, run_command
from mlra.parallel.runtime import TPContext

EXAMPLES = """examples:
  mlra generate --checkpoint runs/tiny --prompt "Once upon a time"
  mlra generate --checkpoint runs/tiny --prompt "The cat" --prompt "A dog" --json
  mlra generate --checkpoint MLRA-4/ --prompt "Attention is" --temperature 0.8 --top-p 0.9
  mlra generate --checkpoint MLA-no-scale/ --variant mla_no_scale --ids 464,3797
  mlra generate --checkpoint runs/tiny --ids 1,2,3 --tp 2 --device cpu
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint (paged KV cache, batched prompts)",
        description=(
            "Generate a continuation of each prompt. One prompt streams its text to the "
            "terminal as it is produced; several prompts are generated as one batch (each "
            "gives exactly what it gives alone, greedy). Greedy by default; --temperature > 0 "
            "samples (with --top-k / --top-p). Stops at the tokenizer's end-of-text token "
            "unless --ignore-eos."
        ),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(p)
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="prompt text (repeat for a batch)")
    p.add_argument("--ids", action="append", default=[], metavar="ID,ID,...",
                   help="a prompt as comma-separated token ids (repeat for a batch; no "
                   "tokenizer needed, prints token ids)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens holding this probability")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the end-of-text token")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document with every prompt's tokens and text")
    p.add_argument("--tokenizer", default=None, metavar="byte|gpt2|PATH",
                   help="tokenizer (default: the checkpoint's tokenizer; GPT-2 BPE for "
                   "official checkpoints)")
    p.add_argument("--gpt2-file", default=None, metavar="PATH",
                   help="local GPT-2 vocabulary for --tokenizer gpt2 / official checkpoints")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="weights and cache dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="decode eagerly on a GPU (default: decode steps replayed through CUDA "
                   "graphs, one capture per batch / table-size bucket)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the dense parts of the decode step of variants without "
                   "fused decode kernels (GTA, MFA, TPA, output gate; MHA/MQA/GQA and the "
                   "latent family decode through fused kernels on a GPU without it); "
                   "max-autotune compilation takes 5-50 s per batch size at start-up")
    add_tp_arg(p)
    p.set_defaults(func=run)


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", ",").split(",") if t.strip()]
    except ValueError as exc:
        raise ConfigError(f"--ids expects comma-separated integers, got {text!r}") from exc
    return ids


class _TextStream:
    """Prints the decoded text as it grows, holding back an incomplete UTF-8 character.

    Each token decodes only the tokens since the last text printed, with the tokens of that
    text as context (``shown`` = decode of the context, ``text`` = decode of context + new;
    the new text is ``text`` past ``shown``), so a token costs the same however long the
    generation (decoding everything each token would grow with it)."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[int]) -> None:
        self.decode, self.stops, self.tokens = decode, set(stops), []
        self.start = 0  # the context window: tokens[start:shown] (printed), then new ones
        self.shown = 0

    def __call__(self, _index: int, token: int) -> None:
        if token in self.stops:
            return
        self.tokens.append(token)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        shown = self.decode(self.tokens[self.start:self.shown])
        text = self.decode(self.tokens[self.start:])
        if len(text) <= len(shown) or (not final and text.endswith("\ufffd")):
            return
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        self.start, self.shown = self.shown, len(self.tokens)

    def close(self) -> None:
        self._flush(final=True)
        sys.stdout.write("\n")
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if not args.prompt and not args.ids:
        raise ConfigError("give at least one --prompt TEXT (or --ids ID,ID,...)")
    if args.prompt and args.ids:
        raise ConfigError("use either --prompt or --ids, not both")
    for text in args.prompt:
        if text == "":
            raise ConfigError("--prompt is empty; give some text to continue")
    parse_dtype(args.dtype, parse_device(args.device))  # option errors before any process starts
    return run_command(args, _generate)


def _generate(ctx: TPContext, args: argparse.Namespace) -> int:
    """The work of one rank (the only one without --tp): every rank computes the same tokens,
    rank 0 prints them."""
    from mlra.generate import generate

    device = ctx.device
    dtype = parse_dtype(args.dtype, device)
    tokenizer = None
    if args.prompt:
        from mlra.checkpoints import checkpoint_tokenizer

        tokenizer = checkpoint_tokenizer(args.checkpoint, args.tokenizer, args.gpt2_file)
        prompts = [tokenizer.encode(t) for t in args.prompt]
    else:
        prompts = [_parse_ids(t) for t in args.ids]
    model = load_checkpoint(args.checkpoint, **checkpoint_options(args), device=device,
                            dtype=dtype, tp=ctx)
    report_ranks(model, ctx)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise DataError(f"tokenizer {tokenizer.name} ({tokenizer.vocab_size} ids) does not fit "
                        f"the model's vocabulary of {model.config.vocab_size}")
    stops = [] if args.ignore_eos or tokenizer is None else [tokenizer.eot_id]
    stream = None
    if tokenizer is not None and len(prompts) == 1 and not args.json and ctx.is_main:
        stream = _TextStream(tokenizer.decode, stops)
    new = generate(
        model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=stops, callback=stream,
        vocab_limit=None if tokenizer is None else tokenizer.vocab_size,
        cuda_graphs=args.cuda_graphs and device.type == "cuda", compile=args.compile,
    )
    if stream is not None:
        stream.close()
    if stream is not None or not ctx.is_main:
        return 0
    results = []
    for i, (p, n) in enumerate(zip(prompts, new, strict=True)):
        stopped = bool(n) and n[-1] in stops
        row = {"prompt_ids": p, "tokens": n, "stop_reason": "stop" if stopped else "length"}
        if tokenizer is not None:
            row = {"prompt": args.prompt[i], **row,
                   "text": tokenizer.decode(n[:-1] if stopped else n)}
        results.append(row)
    if args.json:
        cached = sum(len(p) + max(len(n) - 1, 0) for p, n in zip(prompts, new, strict=True))
        print(json.dumps({"checkpoint": str(args.checkpoint), "model": model.config.name,
                          "results": results, **cache_report(model, cached)}, indent=2))
        return 0
    for i, row in enumerate(results):
        if len(results) > 1:
            print(f"--- prompt {i} ---")
        if tokenizer is not None:
            print(row["prompt"] + row["text"])
        else:
            print(" ".join(str(t) for t in row["tokens"]))
    return 0
