"""Time the Gluon latent kernel's launch configurations beside the Triton kernel at the
decode benchmark's shapes (one run, L2 flushed before each call, CUDA events; needs a Hopper
GPU): ``python benchmarks/decode/gluon_configs.py [--shapes mla,mlra4_tp4] [--lengths 1M]``.
Prints one markdown row per shape, length and kernel configuration."""

from __future__ import annotations

import argparse
from functools import partial

import torch

from mlra.bench.decode import PAPER_SHAPES, SHAPES, build_inputs, io_bytes, parse_size
from mlra.bench.timing import copy_bandwidth, l2_flush_buffer, time_cuda
from mlra.kernels.gluon_latent import GluonLatentConfig, paged_latent_decode_gluon
from mlra.kernels.reference import paged_latent_decode_ref
from mlra.kernels.testing import rel_error
from mlra.kernels.triton_latent import paged_latent_decode_triton

CONFIGS = [GluonLatentConfig(), GluonLatentConfig(block_n=64, warpgroups=1),
           GluonLatentConfig(block_n=64, warpgroups=2), GluonLatentConfig(num_buf=2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="mlra4_tp4,gla2_tp2,mla_2p9b")
    ap.add_argument("--lengths", default="128K,1M")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--configs", default=None,
                    help="block_n,num_buf,warpgroups[,seesaw];... (0 = default) instead of "
                         "the list above")
    args = ap.parse_args()
    configs = CONFIGS
    if args.configs:
        configs = [GluonLatentConfig(*(int(v) or None for v in c.split(",")))
                   for c in args.configs.split(";")]
    shapes = {**SHAPES, **PAPER_SHAPES}
    bw = copy_bandwidth("cuda")
    flush = l2_flush_buffer("cuda")
    print("| shape | tokens | kernel | us | % copy | rel err |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        shape = shapes[name]
        for length in (parse_size(t) for t in args.lengths.split(",")):
            inputs = build_inputs(shape, 1, length, "cuda", seed=length)
            ref = paged_latent_decode_ref(**inputs)[0] if length <= 1 << 17 else None
            cands = [("triton", partial(paged_latent_decode_triton, **inputs,
                                        max_seq_len=length))]
            cands += [(f"gluon {c}", partial(paged_latent_decode_gluon, **inputs, config=c,
                                             max_seq_len=length)) for c in configs]
            floor = io_bytes(shape, 1, length) / bw * 1e6
            for label, fn in cands:
                try:
                    out = fn()[0]
                    err = f"{rel_error(out, ref):.1e}" if ref is not None else "-"
                    us = time_cuda(fn, reps=args.reps, flush=flush).median_us
                    print(f"| {name} | {length >> 10}K | {label} | {us:.1f} | "
                          f"{floor / us:.0%} | {err} |", flush=True)
                except Exception as exc:  # a configuration that does not fit: say so
                    print(f"| {name} | {length >> 10}K | {label} | failed: "
                          f"{type(exc).__name__} | | |", flush=True)
            cands.clear()
            del inputs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
