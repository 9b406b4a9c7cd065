#!/usr/bin/env bash
# Third device call (about 8 minutes), the one-launch MLP with its default parameters (2 x
# 4096 tiles, 4 stages, 4 warps, one program per multiprocessor): GPU tests, the kernel at
# the three MLP shapes and a sweep around the default, issue 13's batch-1 table and batch 8 /
# 32 x 16K before (.baseline = the session's starting commit) / after in one run, profiles
# (launches per layer), the fused-step GPU tests.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp/run_mlp3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 100 python -m pytest -q -p no:cacheprovider tests/test_mlp_kernel.py 2>&1 | tail -2
timeout 60 python benchmarks/e2e_decode/bench_mlp.py --out "$OUT/mlp-default" 2>&1 \
  | grep "^|" | tail -9
timeout 70 python benchmarks/e2e_decode/bench_mlp.py --shapes mlra_4 --sweep --sweep-set near \
  --out "$OUT/mlp-near" 2>&1 | grep "^|" | tail -8
RES=$OUT/steps3; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 110 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
    --modes fused
done
for side in before after; do
  run $side b8-32 60 --variants mlra_4 --contexts 16384 --batches 8,32 --reps 20 --modes fused
done
for v in mlra_4 gqa; do
  timeout 40 python benchmarks/e2e_decode/profile_step.py --variant $v --context 8192 \
    --modes fused --top 8 --reps 10 --out "$OUT/profile-$v-8192" 2>&1 | grep -E "^## |^\| "
done
timeout 70 python -m pytest -q -p no:cacheprovider tests/test_step_kernels.py -k fused 2>&1 \
  | tail -2
