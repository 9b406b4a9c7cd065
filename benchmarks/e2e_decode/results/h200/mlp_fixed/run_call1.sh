#!/usr/bin/env bash
# Thirteenth session (2026-12-04), about 7 minutes. The MLP summed as fixed-point integers
# (MlpConfig reduce="fixed": no grid barrier, the last program to arrive stores the output),
# with and without a pool of hidden units taken from a counter. (1) GPU tests of the MLP
# kernel; (2) the kernel alone (bench_mlp.py --sweep-set fixed); (3) in-step A/B, MLRA-4 and
# MLA at 1 x 8K (env_sweep.py, interleaved rounds); (4) the step traced with a pool.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp_fixed/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
timeout 100 python benchmarks/e2e_decode/bench_mlp.py --out "$OUT/mlp" --shapes mlra_4 --sweep \
  --sweep-set fixed 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
M='"MLRA_MLP_CONFIG"'
C="{\"default (barrier)\": {}, \"fixed\": {$M: {\"reduce\": \"fixed\"}},
 \"fixed pool 0.1 x 8\": {$M: {\"reduce\": \"fixed\", \"pool\": 0.1}},
 \"fixed pool 0.2 x 8\": {$M: {\"reduce\": \"fixed\", \"pool\": 0.2}},
 \"fixed pool 0.1 x 4\": {$M: {\"reduce\": \"fixed\", \"pool\": 0.1, \"pool_units\": 4}}}"
for v in mlra_4 mla; do
  timeout 140 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
MLRA_MLP_CONFIG='{"reduce": "fixed", "pool": 0.1}' timeout 80 python benchmarks/e2e_decode/trace_step.py \
  --variants mlra_4 --contexts 8192 --dump-layer 12 --out "$OUT/trace_fixed" 2>&1 \
  | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
  --dump-layer 12 --out "$OUT/trace_default" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
