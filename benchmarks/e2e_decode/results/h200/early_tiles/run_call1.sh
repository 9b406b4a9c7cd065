#!/usr/bin/env bash
# One device call (about 5 minutes), 2026-12-03 session 4: the Gluon latent kernel's producer
# loads the tiles that hold no row of this step before its PDL wait (the consumers wait
# before the queries). GPU tests of the Gluon kernel and of PDL (the step in a CUDA graph with
# PDL equals plain launches, bit for bit); MLA's batch-1 steps before (.baseline = 20d59f6)
# and after in one run. From the repository root, .baseline carried:
# OUT=dir bash benchmarks/e2e_decode/results/h200/early_tiles/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 python -m pytest -p no:cacheprovider tests/test_gluon_latent.py tests/test_pdl.py \
  --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -6
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 70 --variants mla --contexts 8192,131072 --batches 1 --reps 30 --modes fused
done
for side in before after; do
  run $side b1-again 70 --variants mla --contexts 8192,131072 --batches 1 --reps 30 --modes fused
done
