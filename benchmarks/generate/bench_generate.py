"""``mlra.generate`` end to end: milliseconds per decode step, eager vs CUDA graphs vs compile.

What a user of ``mlra generate`` / :func:`mlra.generate` gets, sampling and Python bookkeeping
included: the paper-size model (random weights, bf16), ``--batch`` prompts of ``--prompt-len``
random tokens, greedy, ``--new-tokens`` tokens each. The step time is the median interval
between consecutive tokens of prompt 0 as the ``callback`` sees them (the sampled ids are
copied to the host every step, so each interval is a whole step), skipping the first
``--skip`` steps: prefill, CUDA-graph captures and compilation happen there and are reported
separately as ``first ms`` (from the call to the first ``--skip`` tokens).

    PYTHONPATH=src python benchmarks/generate/bench_generate.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mlra import ModelConfig, Transformer
from mlra.bench.models import random_model
from mlra.generate import generate

MODES = {"eager": dict(cuda_graphs=False), "graphs": dict(cuda_graphs=True),
         "compile+graphs": dict(cuda_graphs=True, compile=True)}


def build(name: str, size: str, device: torch.device, dtype: torch.dtype) -> Transformer:
    return random_model(ModelConfig.preset(name, size=size, zero_init_output=False), device,
                        dtype)


def step_times(model, prompts, kw: dict, new_tokens: int, skip: int) -> tuple[float, float]:
    """(median seconds per step after ``skip`` steps, seconds until token ``skip``)."""
    stamps: list[float] = []

    def on_token(index: int, _token: int) -> None:
        if index == 0:
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    generate(model, prompts, max_new_tokens=new_tokens, callback=on_token, **kw)
    steady = [b - a for a, b in zip(stamps[skip:-1], stamps[skip + 1:], strict=True)]
    return statistics.median(steady), stamps[skip] - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="mlra_4,mla,gqa")
    p.add_argument("--size", default="paper")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=72)
    p.add_argument("--skip", type=int, default=8, help="steps left out of the median")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="folder for generate.json / generate.md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for name in args.variants.split(","):
        model = build(name, args.size, device, dtype)
        vocab = model.config.vocab_size
        for batch in [int(b) for b in args.batches.split(",")]:
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(0, vocab, (batch, args.prompt_len), generator=g).tolist()
            for mode in args.modes.split(","):
                kw = dict(MODES[mode])
                if device.type != "cuda":
                    kw["cuda_graphs"] = False
                step, first = step_times(model, prompts, kw, args.new_tokens, args.skip)
                row = dict(variant=name, batch=batch, mode=mode, step_ms=step * 1e3,
                           tokens_per_s=batch / step, first_ms=first * 1e3)
                rows.append(row)
                print(f"{name} b={batch} {mode}: {step * 1e3:.2f} ms/step, "
                      f"{batch / step:.0f} tok/s, first {args.skip} tokens {first * 1e3:.0f} ms",
                      flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    md = [f"# generate() per decode step, {device_name}", "",
          f"torch {torch.__version__}, {dtype}, size {args.size}, random weights, prompts of "
          f"{args.prompt_len} tokens, greedy, {args.new_tokens} new tokens; ms/step = median "
          f"interval between tokens after the first {args.skip}; first ms = until token "
          f"{args.skip} (prefill, captures, compilation).", "",
          "`" + " ".join(["python", *sys.argv]) + "`", "",
          "| variant | batch | mode | ms/step | tokens/s | first ms |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['batch']} | {r['mode']} | {r['step_ms']:.2f} | "
           f"{r['tokens_per_s']:.0f} | {r['first_ms']:.0f} |" for r in rows]
    print("\n".join(md))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "generate.md").write_text("\n".join(md) + "\n")
        (out / "generate.json").write_text(json.dumps(
            {"device": device_name, "torch": torch.__version__, "command": sys.argv,
             "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
