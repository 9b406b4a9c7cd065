#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 3 minutes: no size cap by default (call 9). GPU tests of
# the steps that now run the output projection resident (PDL in a CUDA graph against plain
# launches at batch 3 and 1, bit for bit; the fused bf16 steps against fp32), then the
# batch-1 step at 8K for the three variants.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call10.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 120 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider \
  tests/test_pdl.py tests/test_step_kernels.py -k "pdl_step or fused_bf16" -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -5 | tee -a "$OUT/log.txt"
PYTHONPATH=$PWD/src timeout 60 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa \
  --contexts 8192 --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_after" 2>&1 \
  | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//" | tee -a "$OUT/log.txt"
