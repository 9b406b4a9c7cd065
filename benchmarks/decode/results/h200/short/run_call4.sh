#!/usr/bin/env bash
# One device call (about 4 minutes), 2026-12-03 session 4: launch parameters of the Triton
# latent kernel for short contexts (MLRA-4 at 2.9B, batch 1 x 8K: the kernel is bound by the
# latency of ~2.7K instructions per warp, 64-row tiles holding 24 query rows). The kernel
# alone (tune.py: configurations x split counts, merge included), then the whole batch-1 step
# with candidate configurations set through MLRA_LATENT_CONFIG.
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/short/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python benchmarks/decode/tune.py --out "$OUT/tune" --shapes mlra4_2p9b \
  --points 1x8K --split-list 32,64,96,128 --no-breakdown --reps 30 \
  --configs "64,4,5,1,1,64;64,4,3,1,1,32;32,4,3,1,1,32;32,4,4,1,1,32;16,4,3,1,1,32;64,4,5,1,2,64;64,4,5,1,4,64;64,8,3,1,1,64" \
  2>&1 | grep -vi warn | tail -40
for cfg in '' '{"block_m":32,"num_stages":3}' '{"block_m":32,"block_n":32,"num_stages":3}' \
    '{"streams_per_program":2}'; do
  MLRA_LATENT_CONFIG=$cfg timeout 60 python benchmarks/e2e_decode/bench_decode.py \
    --variants mlra_4 --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
    --modes fused --out "$OUT/step-$(echo "$cfg" | tr -dc 'a-z0-9_')" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$cfg] /"
done
