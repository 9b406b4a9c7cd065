#!/usr/bin/env bash
# Ran at commit e561aab (reverted after: slower). One device call (about 5 minutes): the split merge folded into W_UV without redundancy (one
# program per head and latent chunk, the last to arrive sums the head) and the wave model's
# floor of num_stages - 1 tiles per split. GPU tests of the fold, issue 13's batch-1 table
# before (.baseline = the session's starting commit) / after in one run, batch 32 x 16K, and
# the launches per step of MLRA-4, MLA and GQA. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_step_kernels.py \
  -k "merges or fused" 2>&1 | tail -2
RES=$OUT/fold2; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 170 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
    --modes fused
done
for side in before after; do
  run $side b32 100 --variants mlra_4 --contexts 16384 --batches 32 --reps 20 --modes fused
done
for v in mlra_4 mla gqa; do
  timeout 60 python benchmarks/e2e_decode/profile_step.py --variant $v --context 8192 \
    --modes fused --top 8 --reps 10 --out "$OUT/profile-$v-8192" 2>&1 | grep -E "^## |^\| "
done
