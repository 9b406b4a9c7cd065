#!/usr/bin/env python
"""TPA's paged decode kernel at paper size: exactness and time (one GPU).

One attention layer of the paper-size TPA (``ModelConfig.preset("tpa")``: 24 heads, rank 2,
head dim 128; bf16 factor pools, page 64, pages scattered over the pool) decoding one token per
sequence. For each batch and context:

- ``rel_err`` / ``lse_err``: the Triton kernel (:mod:`mlra.kernels.triton_tpa`) against the
  torch reference (:func:`mlra.kernels.reference.paged_tpa_decode_ref`, fp32), relative L2 error
  of the output and largest absolute error of the log-sum-exp; also for two new tokens
  (causal inside the chunk) and a ragged batch with NaN in every row past its length;
- ``kernel_us``: the kernel (split-KV and merge included), median device time with the L2
  flushed before each call;
- ``einsum_us``: the same call through the reference, the PyTorch einsum path TPA decoded
  with before the kernel (every page of the table gathered to fp32);
- ``floor_us``: bytes the call must move (the factors of every cached token once, queries in
  bf16, fp32 outputs and LSE) / measured copy bandwidth (read + write bytes of a large
  device-to-device copy).

``--sweep`` also times a few launch configurations at the largest batch and context. Results
go to ``OUT/tpa_check.json`` (after every row) and ``OUT/tpa_check.md``.

    python benchmarks/decode/tpa_check.py --out benchmarks/decode/results/h200/tpa

Local smoke test (CPU, Triton interpreter): ``--device cpu --size tiny --contexts 40,100``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mlra import ModelConfig  # noqa: E402
from mlra.bench.timing import (  # noqa: E402
    copy_bandwidth,
    l2_flush_buffer,
    median_seconds,
    time_cuda,
)
from mlra.cache import CacheLayout  # noqa: E402
from mlra.kernels.reference import paged_tpa_decode_ref  # noqa: E402
from mlra.kernels.testing import random_tpa_case, rel_error  # noqa: E402
from mlra.kernels.triton_tpa import TPAKernelConfig, paged_tpa_decode_triton  # noqa: E402

FACTORS = ("a_k", "b_k", "a_v", "b_v")


def _ints(text: str) -> list[int]:
    return [int(float(t)) for t in text.split(",") if t.strip()]


def build_inputs(cfg: ModelConfig, batch: int, tokens: int, page: int, device: torch.device,
                 dtype: torch.dtype, seed: int = 0) -> dict:
    """Full sequences of ``tokens`` cached tokens: random factor pools in TPA's cache layout,
    pages in random order, TPA's scales."""
    g = torch.Generator(device=device).manual_seed(seed)
    pages = -(-tokens // page)
    table = torch.randperm(batch * pages, device=device, generator=g).to(torch.int32)
    pools = {name: torch.randn(batch * pages, page, *shape, device=device, generator=g,
                               dtype=dtype)
             for name, shape in CacheLayout.from_config(cfg).pools}
    R = cfg.tpa_rank
    return dict(
        q=torch.randn(batch, 1, cfg.n_heads, cfg.head_dim, device=device, generator=g,
                      dtype=dtype),
        **{n: pools[n] for n in FACTORS}, block_table=table.view(batch, pages),
        seq_lens=torch.full((batch,), tokens, dtype=torch.int32, device=device),
        scale=cfg.softmax_scale / R, value_scale=1.0 / R,
    )


def io_bytes(cfg: ModelConfig, batch: int, tokens: int, elem: int) -> int:
    """Bytes one call must move: every cached token's factors once, the queries, fp32 outputs
    and LSE."""
    per_token = CacheLayout.from_config(cfg).elements_per_token * elem
    H, d = cfg.n_heads, cfg.head_dim
    return batch * tokens * per_token + batch * H * d * elem + 4 * batch * H * (d + 1)


def check(out, lse, ref_out, ref_lse) -> dict:
    finite = torch.isfinite(ref_lse)
    lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
    return {"rel_err": rel_error(out, ref_out), "lse_err": lse_err,
            "nan": bool(torch.isnan(out).any() or torch.isnan(lse).any()),
            "lse_finite_match": bool(torch.equal(finite, torch.isfinite(lse)))}


def timer(device: torch.device, flush: torch.Tensor | None) -> Callable[..., float]:
    def run(fn: Callable[[], object], reps: int) -> float:
        if device.type == "cuda":
            return time_cuda(fn, reps=reps, warmup=3, flush=flush).median_us
        fn()
        return median_seconds(fn, device, max(1, reps // 10)) * 1e6
    return run


def edge_checks(cfg: ModelConfig, page: int, device: torch.device, dtype: torch.dtype,
                lens: list[int]) -> dict:
    """Two new tokens over a ragged batch with NaN past every sequence (the test helper)."""
    case = random_tpa_case(lens, page, 2, cfg.n_heads, cfg.tpa_rank, cfg.head_dim, dtype=dtype,
                           device=device, seed=5)
    case["scale"] = cfg.softmax_scale / cfg.tpa_rank
    ref = paged_tpa_decode_ref(**case)
    got = paged_tpa_decode_triton(**case)
    return {"lens": lens, "tq": 2, **check(*got, *ref)}


def markdown(res: dict) -> str:
    lines = [
        f"# TPA paged decode kernel, {res['device']}", "",
        f"torch {res['torch']}, triton {res['triton']}; one attention layer of "
        f"`ModelConfig.preset(\"{res['size']}\")` TPA ({res['heads']} heads, rank {res['rank']}, "
        f"head dim {res['head_dim']}), {res['dtype']} factor pools, page {res['page_size']}, one "
        f"new token per sequence. Copy bandwidth {res['copy_bandwidth_GBps']:.0f} GB/s (read + "
        f"write); floor = bytes moved / copy bandwidth. Command: `{res['command']}`", "",
        "| batch | context | MB moved | floor us | kernel us | kernel/floor | GB/s | einsum us "
        "| einsum/kernel | rel err | lse err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['bytes'] / 1e6:.1f} | {r['floor_us']:.1f} | "
            f"{r['kernel_us']:.1f} | {r['kernel_us'] / r['floor_us']:.2f} | "
            f"{r['bytes'] / r['kernel_us'] / 1e3:.0f} | {r['einsum_us']:.0f} | "
            f"{r['einsum_us'] / r['kernel_us']:.1f} | {r['rel_err']:.1e} | {r['lse_err']:.1e} |")
    if res.get("edge"):
        lines += ["", "Ragged batch, two new tokens, NaN past each sequence:"]
        lines += [f"- lengths {e['lens']}: rel err {e['rel_err']:.1e}, lse err "
                  f"{e['lse_err']:.1e}, NaN in output: {e['nan']}" for e in res["edge"]]
    if res.get("sweep"):
        lines += ["", f"Launch configurations at batch {res['sweep'][0]['batch']}, context "
                  f"{res['sweep'][0]['context']}:", "",
                  "| block_n | warps | stages | kernel us |", "|---|---|---|---|"]
        lines += [f"| {s['block_n']} | {s['num_warps']} | {s['num_stages']} | "
                  + (f"{s['kernel_us']:.1f} |" if "kernel_us" in s else f"{s['error']} |")
                  for s in res["sweep"]]
    return "\n".join(lines) + "\n"


# block_n, warps, stages (4 B tiles of block_n x 128 bf16 per stage: 128 x 2 would not fit)
SWEEP = ((32, 4, 2), (32, 4, 4), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 1), (128, 8, 1))


def sweep(cfg, batch, context, args, device, dtype, measure, res, save) -> None:
    """Time the launch configurations of :data:`SWEEP` on one batch and context."""
    tokens = context + 1
    inputs = build_inputs(cfg, batch, tokens, args.page_size, device, dtype)
    for bn, warps, stages in SWEEP:
        conf = TPAKernelConfig(block_n=bn, num_warps=warps, num_stages=stages)

        def call(conf=conf):
            return paged_tpa_decode_triton(**inputs, config=conf, max_seq_len=tokens)

        row = {"batch": batch, "context": context, "block_n": bn, "num_warps": warps,
               "num_stages": stages}
        try:
            row["kernel_us"] = measure(call, args.reps)
        except Exception as exc:  # e.g. a configuration out of shared memory
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        res["sweep"].append(row)
        save()


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "out/tpa_check")
    p.add_argument("--contexts", default="8192,131072")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--size", default="paper")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--einsum-reps", type=int, default=10)
    p.add_argument("--sweep", action="store_true", help="time a few launch configurations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: pass --device cpu for a smoke run in the Triton interpreter")
    dtype = torch.bfloat16
    cfg = ModelConfig.preset("tpa", size=args.size)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth(device)
    flush = l2_flush_buffer(device) if device.type == "cuda" else None
    measure = timer(device, flush)
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": sys.modules["triton"].__version__,
        "size": args.size, "heads": cfg.n_heads, "rank": cfg.tpa_rank, "head_dim": cfg.head_dim,
        "dtype": "bfloat16", "page_size": args.page_size, "copy_bandwidth_GBps": bw / 1e9,
        "command": "python benchmarks/decode/tpa_check.py " + " ".join(argv or sys.argv[1:]),
        "rows": [], "edge": [], "sweep": [],
    }
    print(f"{res['device']}: copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)

    def save() -> None:
        (out_dir / "tpa_check.json").write_text(json.dumps(res, indent=2) + "\n")
        (out_dir / "tpa_check.md").write_text(markdown(res))

    contexts, batches = _ints(args.contexts), _ints(args.batches)
    for batch in batches:
        for context in contexts:
            tokens = context + 1  # the cached context plus the token being decoded
            t0 = time.time()
            inputs = build_inputs(cfg, batch, tokens, args.page_size, device, dtype)
            out = torch.empty(batch, 1, cfg.n_heads, cfg.head_dim, device=device)
            lse = torch.empty(batch, 1, cfg.n_heads, device=device)

            def kernel(inputs=inputs, out=out, lse=lse, tokens=tokens):
                return paged_tpa_decode_triton(**inputs, out=out, lse=lse, max_seq_len=tokens)

            def einsum(inputs=inputs):
                return paged_tpa_decode_ref(**inputs)

            row = {"batch": batch, "context": context, "tokens": tokens,
                   **check(*kernel(), *einsum())}
            row["bytes"] = io_bytes(cfg, batch, tokens, dtype.itemsize)
            row["floor_us"] = row["bytes"] / bw * 1e6
            row["kernel_us"] = measure(kernel, args.reps)
            row["einsum_us"] = measure(einsum, args.einsum_reps)
            res["rows"].append(row)
            save()
            print(f"b={batch} ctx={context}: kernel {row['kernel_us']:.1f} us, floor "
                  f"{row['floor_us']:.1f} us ({row['kernel_us'] / row['floor_us']:.2f}x), einsum "
                  f"{row['einsum_us']:.0f} us, rel err {row['rel_err']:.1e} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            del inputs, out, lse
            if args.sweep and (batch, context) == (max(batches), max(contexts)):
                sweep(cfg, batch, context, args, device, dtype, measure, res, save)
    small = [max(3, c // 7) for c in contexts[:1]]
    for lens in ([contexts[-1] // 3, 17, 1, *small], [5, 70]):
        res["edge"].append(edge_checks(cfg, 16, device, dtype, lens))
        save()
    print(markdown(res))
    bad = [r for r in res["rows"] + res["edge"]
           if r["nan"] or not r["lse_finite_match"] or r["rel_err"] > 1e-2 or r["lse_err"] > 2e-3]
    if bad:
        print(f"FAILED: {len(bad)} checks over tolerance (rel err 1e-2, lse err 2e-3)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
