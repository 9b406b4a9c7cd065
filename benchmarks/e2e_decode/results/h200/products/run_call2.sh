#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 5 minutes. (1) GPU tests of the resident projection's new
# forms against the fp32 reference; (2) in-step A/B (env_sweep.py, interleaved rounds): x read
# row by row (call 1's code, where the compiled code issued the row loads one L2 round trip
# after another, the norm's shuffles between them) against x read flat (every load in flight
# at once; the new default), and the products with warps along a box's chunks or a whole box
# per load; (3) the marks with MLRA_RESIDENT_DIAG=x (x staged) on the new default.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  -k "product_forms or matches_reference or dispatch" -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -5 | tee -a "$OUT/log.txt"
R='"MLRA_RESIDENT_CONFIG"'
C="{\"x rows (call 1)\": {$R: {\"x_flat\": false}}, \"x flat (default)\": {},
 \"chunks\": {$R: {\"products\": \"chunks\"}}, \"box\": {$R: {\"products\": \"box\"}}}"
for v in mlra_4 mla; do
  timeout 130 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
MLRA_RESIDENT_DIAG=x timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --dump-layer 12 --out "$OUT/trace_x" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
