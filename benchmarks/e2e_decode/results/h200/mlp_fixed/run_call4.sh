#!/usr/bin/env bash
# Thirteenth session (2026-12-04), about 4 minutes. Call 3: the growing barrier count was
# faster for MLA and GQA and slower for MLRA-4; its polls are acquire loads, each followed by
# an L1 invalidation (CCTL.IVALL in the SASS). Here also relaxed polls and one acquire fence
# after them (MLRA_MLP_AB=3), beside the acquire polls (default) and the previous tree's code
# (MLRA_MLP_AB=2). GPU test of the barrier count under each, then in-step A/B at 1 x 8K.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp_fixed/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
for ab in 0 3; do
  MLRA_MLP_AB=$ab timeout 60 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider \
    tests/test_mlp_kernel.py -k "barrier_count or matches_reference" -rA --tb=short > "$OUT/pytest_$ab.txt" 2>&1
  echo "MLRA_MLP_AB=$ab pytest rc=$?" | tee -a "$OUT/log.txt"
  grep -cE "^PASSED" "$OUT/pytest_$ab.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
done
C='{"growing count, acquire polls (default)": {}, "growing count, relaxed polls + fence": {"MLRA_MLP_AB": "3"},
 "reset barrier, residual late (previous)": {"MLRA_MLP_AB": "2"}}'
for v in mlra_4 mla gqa; do
  timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 4 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
