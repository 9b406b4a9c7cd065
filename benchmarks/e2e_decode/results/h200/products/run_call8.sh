#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 3 minutes. Call 5 paced every resident launch (one TMA
# box per program in flight): MLRA-4 and GQA faster, MLA slower. Only GQA's resident launch is
# the output projection, and it gained most; here only launches of at least 16 MB are paced
# (MLRA_RESIDENT_CONFIG pace_mb: in the paper-size models the output projection alone, 18.9 MB).
# GPU tests of the paced form first, then the in-step A/B, 4 interleaved rounds.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call8.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 100 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  -k "paced" -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -5 | tee -a "$OUT/log.txt"
R='"MLRA_RESIDENT_CONFIG"'
C="{\"default\": {}, \"output projection paced\": {$R: {\"pace_mb\": 16}}}"
for v in mlra_4 mla gqa; do
  timeout 120 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 4 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
