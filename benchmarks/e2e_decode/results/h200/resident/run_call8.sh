#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 7 minutes: the final tree's GPU tests (the resident
# projection; PDL steps in CUDA graphs against plain launches, bit for bit; the fused steps
# against the reference; CUDA graphs; decoding), then issue 13's batch-1 table, the session's
# start tree 94df041 (carried as .baseline) and this tree, one run.
# From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call8.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 290 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider -q \
  tests/test_gluon_skinny.py tests/test_pdl.py tests/test_step_kernels.py tests/test_cuda_graphs.py \
  tests/test_decoding.py --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -8 | tee -a "$OUT/log.txt"
for side in before after; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 130 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /" | tee -a "$OUT/log.txt"
done
