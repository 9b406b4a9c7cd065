#!/usr/bin/env bash
# Fourteenth session (2026-12-04), about 8 minutes. Launches whose programs do not spread
# evenly over the 132 multiprocessors: the query up-projection's 144 resident programs of 32
# rows (12 multiprocessors compute 64 rows, the rest 32: 34.9 on average) and W_UV's 192
# programs of 16 outputs (60 multiprocessors run two). (1) GPU tests of the resident kernel;
# (2) in-step A/B at 1 x 8K, MLRA-4 and MLA: the plan that minimises the rows of the busiest
# multiprocessor (blocks of at least 8 or 4 rows), W_UV with 8 outputs per program
# (MLRA_UV_BD, a switch of this call only), both; (3) the current tree's step traced
# (per-launch shares, MLRA-4 and MLA). Outputs other than log.txt / pytest.txt in out.tgz.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
timeout 200 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
R='"MLRA_RESIDENT_CONFIG"'
C="{\"default\": {}, \"balance >= 8\": {$R: {\"balance_min\": 8}}, \"balance >= 4\": {$R: {\"balance_min\": 4}},
 \"W_UV 8 outputs\": {\"MLRA_UV_BD\": \"8\"}, \"balance >= 8, W_UV 8\": {$R: {\"balance_min\": 8}, \"MLRA_UV_BD\": \"8\"}}"
for v in mlra_4 mla; do
  timeout 170 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
timeout 90 python benchmarks/e2e_decode/trace_step.py --variants mlra_4,mla --contexts 8192 \
  --out "$OUT/tmp/trace" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
