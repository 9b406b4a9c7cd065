"""Launches one decode-attention call of a benchmark shape a few times, for ``ncu`` to profile
one launch: ``python benchmarks/decode/ncu_decode.py mlra4_2p9b 8K`` (shapes of
:data:`mlra.bench.decode.SHAPES` and :data:`~mlra.bench.decode.PAPER_SHAPES`, batch 1)."""

from __future__ import annotations

import sys

import torch

from mlra.bench.decode import PAPER_SHAPES, SHAPES, build_inputs, parse_size, triton_call


def main(argv: list[str]) -> int:
    name, length_text = argv[0], argv[1]
    shape, length = {**SHAPES, **PAPER_SHAPES}[name], parse_size(length_text)
    fn = triton_call(shape, build_inputs(shape, 1, length, "cuda", seed=length), length)
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    print(f"{name} {length}: 5 calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
