#!/usr/bin/env bash
# 2026-12-03 (fifth session), the last ~4 minutes of device time: the latent kernel with the
# query rows as the N side of its products (LatentKernelConfig.query_cols: scores
# [tokens, rows], 24 query rows padded to 32 instead of 64). GPU correctness, the kernel at
# MLRA-4 1 x 8K beside the default (tune.py), the step with it (MLRA_LATENT_CONFIG).
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/short/run_call7.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 60 python -m pytest -p no:cacheprovider tests/test_kernels.py -k query_cols \
  --tb=line > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"; tail -2 "$OUT/pytest.txt"
timeout 70 python benchmarks/decode/tune.py --out "$OUT/tune" --shapes mlra4_2p9b \
  --points 1x8K --split-list 32,64 --no-breakdown --reps 30 \
  --configs "64,4,5,1,1,64;64,4,5,1,1,32,1;64,4,3,1,1,32,1" 2>&1 | grep -E "us |FAIL" | head -8
for cfg in '' '{"query_cols":true,"block_m":32}'; do
  MLRA_LATENT_CONFIG=$cfg timeout 35 python benchmarks/e2e_decode/bench_decode.py \
    --variants mlra_4 --contexts 8192 --batches 1 --reps 30 --compile-batches "" \
    --modes fused --out "$OUT/step-$(echo "$cfg" | tr -dc 'a-z0-9_')" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$cfg] /"
done
