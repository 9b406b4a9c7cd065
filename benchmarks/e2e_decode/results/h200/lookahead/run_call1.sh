#!/usr/bin/env bash
# One device call (about 8 minutes): the L2 lookahead of batch-1 steps. GPU tests (lookahead
# and PDL: the step with the lookahead equals the step without, bit for bit); issue 13's
# batch-1 points with lookahead budgets of 0 (none), 16, 32 and 48 MB side by side in one run;
# the MLRA-4 8K profile without and with it. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python -m pytest -p no:cacheprovider tests/test_lookahead.py tests/test_pdl.py \
  --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -6
timeout 330 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa \
  --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
  --modes fused-la0,fused-la16,fused-la32,fused-la48 --budget-s 320 --out "$OUT/sweep" 2>&1 \
  | grep -E "ms, floor|rror" | tail -30
for mb in 0 32; do
  MLRA_LOOKAHEAD_MB=$mb timeout 45 python benchmarks/e2e_decode/profile_step.py \
    --variant mlra_4 --context 8192 --modes fused --top 8 --reps 10 \
    --out "$OUT/profile-mlra_4-8192-la$mb" 2>&1 | grep -E "^## |^\| "
done
