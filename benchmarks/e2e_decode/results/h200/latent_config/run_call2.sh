#!/usr/bin/env bash
# 2026-12-04 (ninth session), about 2 minutes: MLRA-4's batch-1 step at 8K against the latent
# attention's split count (MLRA_LATENT_CONFIG num_splits, new): the wave model gives 66 splits
# x 4 streams (two 64-token tiles per program); GQA's attention gained from more, shorter
# programs at this length (../gqa_attention). Default before and after.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/latent_config/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
for cfg in "" '{"num_splits": 99}' '{"num_splits": 129}' '{"num_splits": 86}' \
    '{"num_splits": 129, "num_stages": 2}' ""; do
  MLRA_LATENT_CONFIG=$cfg timeout 45 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4 \
    --contexts 8192 --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/tmp" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[${cfg:-default}] /" | tee -a "$OUT/log.txt"
done
rm -rf "$OUT/tmp"
