#!/usr/bin/env bash
# Prepared in the fourteenth session (2026-12-04) as call 5, now call 6, for after calls 3-5:
# issue 13's batch-1 table, the start tree (.baseline/ carried) and this tree under the
# environment the A/B of calls 3-4 chose (AFTER_ENV: one VARIABLE=value per line, e.g.
# AFTER_ENV='MLRA_RESIDENT_CONFIG={"products": "mma"}'; empty: the tree's defaults), one run
# each, about 5 minutes. Once a form is made the default, run it with AFTER_ENV empty.
# From the repository root: OUT=dir AFTER_ENV=... bash benchmarks/e2e_decode/results/h200/balance/run_call6.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
echo "AFTER_ENV=${AFTER_ENV:-}" | tee -a "$OUT/log.txt"
for side in before after; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py; envs=()
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  [ $side = after ] && [ -n "${AFTER_ENV:-}" ] && mapfile -t envs <<< "$AFTER_ENV"
  env "${envs[@]}" PYTHONPATH=$src timeout 130 python $script --variants mlra_4,mla,gqa \
    --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" --modes fused \
    --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /" | tee -a "$OUT/log.txt"
done
