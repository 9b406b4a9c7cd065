#!/usr/bin/env bash
# Second lookahead call (about 7 minutes): GPU tests; does a lookahead land (the output
# projection and the MLP timed alone after bulk / line prefetches or a plain read); the split
# decode call at 8K (kernel, merge, gaps, split counts); batch-1 steps with budgets 0 / 16 /
# 32 MB for each prefetch method and place. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 120 python -m pytest -p no:cacheprovider tests/test_lookahead.py tests/test_pdl.py \
  --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -6
timeout 60 python benchmarks/e2e_decode/lookahead_probe.py --out "$OUT/probe" 2>&1 | tail -6
timeout 60 python benchmarks/decode/fixed_cost.py --points mla:8K,mlra4_fused:8K \
  --splits 0.25,0.5,2 --reps 30 --out "$OUT/fixed_cost" 2>&1 | tail -14
for combo in bulk:attention lines:attention bulk:output lines:output; do
  MLRA_LOOKAHEAD_METHOD=${combo%:*} MLRA_LOOKAHEAD_AT=${combo#*:} timeout 75 python \
    benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused-la0,fused-la16,fused-la32 \
    --budget-s 70 --out "$OUT/sweep-${combo/:/-}" 2>&1 | grep -E "ms, floor|rror" \
    | sed "s/^/$combo /" | sed -E 's/, [0-9]+ tok.*//'
done
