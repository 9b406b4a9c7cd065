#!/usr/bin/env bash
# 2026-12-04 (ninth session), about 4 minutes: MLRA-4's batch-1 step at 8K against latent
# attention launch parameters not tried before (MLRA_LATENT_CONFIG): 8 warps, two streams per
# program, 32 query rows per block (24 heads), 4 stages; default before and after.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/latent_config/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
for cfg in "" '{"num_warps": 8}' '{"streams_per_program": 2}' '{"block_m": 32}' \
    '{"num_stages": 4}' ""; do
  MLRA_LATENT_CONFIG=$cfg timeout 45 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4 \
    --contexts 8192 --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/tmp" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[${cfg:-default}] /" | tee -a "$OUT/log.txt"
done
rm -rf "$OUT/tmp"
