#!/usr/bin/env bash
# Tenth session (2026-12-04), about 6 minutes: GPU tests of what changed (the projection
# kernel with early_next inside PDL steps captured in CUDA graphs against plain launches, the
# fused bf16 steps, the split merge), then issue 13's batch-1 table: the session's start tree
# de0a061 (carried as .baseline) and this tree, one run.
# From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/table_tenth/run_call1.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 170 python -m pytest -p no:cacheprovider tests/test_pdl.py \
  tests/test_step_kernels.py tests/test_kernels.py -k "pdl or fused_bf16 or skinny_linear_matches or merge_splits" \
  --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5 | tee -a "$OUT/log.txt"
for side in before after; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 130 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /" | tee -a "$OUT/log.txt"
done
