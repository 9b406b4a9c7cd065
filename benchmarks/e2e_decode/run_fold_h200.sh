#!/usr/bin/env bash
# One device call (about 3 minutes): the split merge folded into W_UV. GPU tests of the fold,
# batch 1 before (.baseline = the commit before the fold) / after for MLRA-4 and MLA, and the
# launches per step. Ran at commit 134c5c4 (the fold, reverted after: slower); re-run from there.
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 70 python -m pytest -q -p no:cacheprovider tests/test_step_kernels.py \
  -k "merges or fused_bf16" 2>&1 | tail -2
RES=$OUT/fold; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 60 --variants mlra_4,mla --contexts 8192,131072 --batches 1 --reps 30 --modes fused
done
timeout 45 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --context 8192 \
  --modes fused --top 6 --reps 10 --out "$OUT/profile-fold" 2>&1 | grep -E "^## |^\| "
