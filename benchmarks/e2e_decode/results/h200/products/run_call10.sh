#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 2 minutes. Call 9: W_UV and the output projection in one
# launch made the step 10-15% slower (and its GPU tests did not run: a bad -k expression).
# Here the GPU tests of that launch, then the MLRA-4 1 x 8K step traced with it, per-program
# marks of layer 12 (where the time goes).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call10.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 100 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_uv_oproj.py \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
  --dump-layer 12 --out "$OUT/trace_uv" 2>&1 | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
