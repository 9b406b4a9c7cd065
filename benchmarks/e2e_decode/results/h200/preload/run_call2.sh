#!/usr/bin/env bash
# The W_UV launch's weight slice loaded before its PDL wait (MLRA_STEP_PRELOAD=1) against
# without, alternated three times in one call: MLA and MLRA-4 at 1 x 8K and 1 x 128K.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/preload/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
for r in 1 2 3; do
  for u in 0 1; do
    MLRA_STEP_PRELOAD=$u timeout 90 python benchmarks/e2e_decode/bench_decode.py \
      --variants mla,mlra_4 --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
      --modes fused --out "$OUT/wuv$r-$u" 2>&1 | grep -E "ms, floor|rror" \
      | sed -E "s/, [0-9]+ tok.*//; s/^/[run $r, W_UV preload $u] /"
  done
done
