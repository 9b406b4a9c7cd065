#!/usr/bin/env bash
# One device call (about 3 minutes), 2026-12-03 session 4: the GPU run of the
# MLRA_LATENT_CONFIG test; profiles (exposed time per kernel group) of the batch-1 steps
# still above 1.4x their floor, for the next session.
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/short/run_call5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 90 python -m pytest -p no:cacheprovider tests/test_kernels.py -k environment \
  --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"; tail -2 "$OUT/pytest.txt"
for p in "mla 8192" "mla 131072" "mlra_4 131072"; do
  set -- $p
  timeout 60 python benchmarks/e2e_decode/profile_step.py --variant $1 --context $2 \
    --modes fused --top 8 --reps 10 --out "$OUT/profile-$1-$2" 2>&1 | grep -E "^## |^\| "
done
