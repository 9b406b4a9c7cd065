#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 5 minutes: with the output projection left on the
# Triton kernel by default (gluon_skinny.DEFAULT_MAX_MB), the kernel's GPU tests; every
# program's marks of one MLRA-4 8K layer (trace_step.py --dump-layer: do the resident
# programs start before their predecessor ends?); issue 13's batch-1 table, the session's
# start tree 94df041 (carried as .baseline) and this tree, one run.
# From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call3.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 200 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider \
  tests/test_gluon_skinny.py --tb=short > "$OUT/pytest_resident.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -E "^E |passed|failed|error" "$OUT/pytest_resident.txt" | tail -8 | tee -a "$OUT/log.txt"
PYTHONPATH=$PWD/src timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --dump-layer 12 --out "$OUT/trace_dump" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
for side in before after; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 130 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /" | tee -a "$OUT/log.txt"
done
