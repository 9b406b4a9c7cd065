#!/usr/bin/env bash
# Thirteenth session (2026-12-04), about 7 minutes, .baseline/ carried (the session's start,
# 5b7f40d). GPU tests of the final MLP barrier (a count that only grows, relaxed polls and one
# acquire fence, the residual loaded before it; PDL in CUDA graphs), then issue 13's batch-1
# table, start tree and this tree, one run each.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp_fixed/run_call5.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 150 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider -q \
  tests/test_mlp_kernel.py tests/test_pdl.py tests/test_kernel_trace.py tests/test_cuda_graphs.py \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
for side in before after; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 130 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /" | tee -a "$OUT/log.txt"
done
