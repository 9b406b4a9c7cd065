#!/usr/bin/env bash
# 2026-12-03 (fifth session), last device call: launch parameters of the Triton latent
# kernel at MLRA-4 1 x 8K not tried in call 4 -- 128-token tiles (one tile per split at 64
# splits; pointer loads, a tile spans two 64-token pages), and 64-token tiles with fewer
# stages (less shared memory, more programs resident). The kernel alone (tune.py, merge
# included), then the step with two candidates beside the default (MLRA_LATENT_CONFIG).
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/short/run_call6.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 python benchmarks/decode/tune.py --out "$OUT/tune" --shapes mlra4_2p9b \
  --points 1x8K --split-list 32,64,128 --no-breakdown --reps 30 \
  --configs "64,4,5,1,1,64;64,4,2,1,1,64;64,4,3,1,1,64;64,8,2,1,1,64;128,8,2,0,1,64;128,8,3,0,1,64;128,4,2,0,1,64" \
  2>&1 | grep -vi warn | tail -30
for cfg in '' '{"block_n":128,"num_warps":8,"num_stages":2,"use_tma":false}' '{"num_stages":3}'; do
  MLRA_LATENT_CONFIG=$cfg timeout 45 python benchmarks/e2e_decode/bench_decode.py \
    --variants mlra_4 --contexts 8192 --batches 1 --reps 30 --compile-batches "" \
    --modes fused --out "$OUT/step-$(echo "$cfg" | tr -dc 'a-z0-9_')" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$cfg] /"
done
