"""``mlra serve``: an OpenAI-compatible HTTP server over the continuous-batching engine."""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from mlra.checkpoints.cli import add_checkpoint_args, checkpoint_options
from mlra.devices import parse_device, parse_dtype
from mlra.errors import ConfigError, DataError
from mlra.parallel.cli import add_tp_arg, report_ranks, run_command
from mlra.parallel.runtime import TPContext, in_torchrun

EXAMPLES = """examples:
  mlra serve --checkpoint runs/book --port 8000
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "book", "prompt": "Once upon a time", "max_tokens": 40}'
  mlra serve --checkpoint runs/book --cache-tokens 65536 --max-batch-size 128
  mlra serve --checkpoint MLRA-4/ --gpt2-file r50k_base.tiktoken --tp 4
  mlra serve --checkpoint runs/tiny --tp 2 --device cpu
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP (OpenAI-compatible completions, continuous batching)",
        description=(
            "Serve a checkpoint over an OpenAI-compatible HTTP API: POST /v1/completions, "
            "POST /v1/chat/completions (when the tokenizer has a chat template), GET /v1/models, "
            "GET /health and GET /metrics (Prometheus). Requests share one paged KV cache "
            "through a continuous-batching engine. SIGTERM drains the open requests, then exits. "
            "Needs the 'serve' extra: pip install 'mlra[serve]'."
        ),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients send (default: the checkpoint directory's name)")
    p.add_argument("--cache-tokens", type=int, default=None, metavar="N",
                   help="KV cache budget in tokens, shared by every request (default: 16 full "
                   "contexts); requests wait, or the latest is preempted, when it is full")
    p.add_argument("--page-size", type=int, default=64, metavar="N",
                   help="tokens per cache page (default 64)")
    p.add_argument("--max-batch-size", type=int, default=64, metavar="N",
                   help="most sequences decoded together (default 64)")
    p.add_argument("--prefill-chunk", type=int, default=2048, metavar="N",
                   help="most prompt tokens prefilled per step, so long prompts do not stall "
                   "the running requests (default 2048)")
    p.add_argument("--tokenizer", default=None, metavar="byte|gpt2|PATH",
                   help="tokenizer (default: the checkpoint's tokenizer; GPT-2 BPE for "
                   "official checkpoints; without one, prompts must be token ids)")
    p.add_argument("--gpt2-file", default=None, metavar="PATH",
                   help="local GPT-2 vocabulary for --tokenizer gpt2 / official checkpoints")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="Jinja chat template for /v1/chat/completions (default: the checkpoint's "
                   "chat_template.jinja or tokenizer_config.json, if any)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="weights and cache dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="decode eagerly on a GPU (default: CUDA graphs per batch bucket)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the dense parts of the decode step")
    p.add_argument("--drain-seconds", type=float, default=30.0, metavar="S",
                   help="on SIGTERM, wait this long for open requests before closing them")
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning)")
    add_tp_arg(p)
    p.set_defaults(func=run)


def _check_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "jinja2")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"mlra serve needs {', '.join(missing)}: pip install 'mlra[serve]'")


def _forward_sigterm_to_rank0() -> None:
    """Under ``--tp`` this process only watches the ranks: SIGTERM goes to rank 0, which
    drains and stops the others (they all exit 0)."""

    def forward(_signum, _frame) -> None:
        for child in multiprocessing.active_children():
            if child.name == "mlra-tp-rank0" and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)


def run(args: argparse.Namespace) -> int:
    _check_extra()
    for name in ("port", "page_size", "max_batch_size", "prefill_chunk", "cache_tokens"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "port" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    parse_dtype(args.dtype, parse_device(args.device))  # option errors before any process
    if args.tp not in (None, 1) and not in_torchrun():
        _forward_sigterm_to_rank0()
    return run_command(args, _serve)


def _serve(ctx: TPContext, args: argparse.Namespace) -> int:
    """One rank: rank 0 serves, the others follow its engine's steps."""
    from mlra.checkpoints import checkpoint_tokenizer, load_checkpoint, resolve_checkpoint_dir
    from mlra.serve.server import ServeOptions, find_chat_template, serve

    device = ctx.device
    dtype = parse_dtype(args.dtype, device)
    _, directory = resolve_checkpoint_dir(args.checkpoint)
    try:
        tokenizer = checkpoint_tokenizer(args.checkpoint, args.tokenizer, args.gpt2_file)
        if hasattr(tokenizer, "check"):
            tokenizer.check()
    except DataError as exc:
        if args.tokenizer is not None:
            raise
        if ctx.is_main:
            print(f"mlra serve: no tokenizer ({exc}); prompts must be token ids",
                  file=sys.stderr)
        tokenizer = None
    model = load_checkpoint(args.checkpoint, **checkpoint_options(args), device=device,
                            dtype=dtype, tp=ctx).eval()
    report_ranks(model, ctx)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise DataError(f"tokenizer {tokenizer.name} ({tokenizer.vocab_size} ids) does not fit "
                        f"the model's vocabulary of {model.config.vocab_size}")
    options = ServeOptions(
        host=args.host, port=args.port,
        model_name=args.served_model_name or Path(args.checkpoint).resolve().name,
        cache_tokens=args.cache_tokens, page_size=args.page_size,
        max_batch_size=args.max_batch_size, prefill_chunk=args.prefill_chunk,
        cuda_graphs=args.cuda_graphs and device.type == "cuda", compile=args.compile,
        chat_template=find_chat_template(directory, args.chat_template),
        drain_s=args.drain_seconds, log_level=args.log_level,
    )
    return serve(model, tokenizer, options, ctx if ctx.world_size > 1 else None)
