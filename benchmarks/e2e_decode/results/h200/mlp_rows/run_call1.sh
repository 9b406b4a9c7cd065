#!/usr/bin/env bash
# 2026-12-04 (ninth session), first call (about 7 minutes): the MLP with a row-major down
# weight (gate/up before the grid barrier, each program's output rows after it, its first
# down columns prefetched into L2 while it waits) -- GPU tests of both layouts, the kernel
# alone beside the column-major form with a sweep of its parameters, and the MLRA-4 1 x 8K
# step: start tree (.baseline) / this tree with the column-major MLP / with the row-major one.
# From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/mlp_rows/run_call1.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 200 python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py \
  --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
PYTHONPATH=$PWD/src timeout 120 python benchmarks/e2e_decode/bench_mlp.py --shapes mlra_4 \
  --sweep --sweep-set rows --out "$OUT/mlp" 2>&1 | grep -E "^\| mlra|rror" | head -20
for side in before columns rows; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  MLRA_MLP_DOWN=${side/before/columns} PYTHONPATH=$src timeout 60 python $script --variants mlra_4 --contexts 8192 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /"
done
