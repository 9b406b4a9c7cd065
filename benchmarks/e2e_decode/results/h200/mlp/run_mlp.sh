#!/usr/bin/env bash
# One device call (about 8 minutes): the one-launch batch-1 MLP. Its GPU tests, the kernel
# beside the two launches it replaces (and a sweep at MLRA-4's shape), issue 13's batch-1
# table before (.baseline = the session's starting commit) / after in one run, batch 8 and
# 32 x 16K before / after, the MLRA-4 8K profile, the fused-step GPU tests.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp/run_mlp.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 100 python -m pytest -q -p no:cacheprovider tests/test_mlp_kernel.py 2>&1 | tail -3
timeout 60 python benchmarks/e2e_decode/bench_mlp.py --shapes mla,gqa --out "$OUT/mlp-all" \
  2>&1 | grep "^|" | tail -8
timeout 90 python benchmarks/e2e_decode/bench_mlp.py --shapes mlra_4 --sweep \
  --out "$OUT/mlp-sweep" 2>&1 | grep "^|" | tail -14
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 150 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
    --modes fused
done
for side in before after; do
  run $side b8-32 70 --variants mlra_4 --contexts 16384 --batches 8,32 --reps 20 --modes fused
done
timeout 45 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --context 8192 \
  --modes fused --top 8 --reps 10 --out "$OUT/profile-mlra_4-8192" 2>&1 | grep -E "^## |^\| "
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_step_kernels.py -k fused 2>&1 \
  | tail -2
