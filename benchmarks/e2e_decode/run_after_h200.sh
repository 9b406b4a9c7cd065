#!/usr/bin/env bash
# Device call B (about 8 minutes): profiles of the new step (batch 1 at 8K and 128K, batch 32
# x 16K), the projections' pipeline-depth sweep at 1 and 32 rows, and issue 12's kernel table
# (`mlra bench decode`, FlashMLA beside it when .carry holds it). OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}
mkdir -p "$OUT"
for spec in "1 8192" "1 131072" "32 16384"; do
  set -- $spec
  timeout 60 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --batch $1 \
    --context $2 --modes fused --top 10 --reps 10 --out "$OUT/profile-b$1-$2" 2>&1 \
    | grep -E "^## |^\| " | head -13
done
timeout ${T_SKINNY:-200} python benchmarks/e2e_decode/bench_skinny.py --rows 1,32 --sweep \
  --sweep-rows 1,32 --sweep-set depth --quick --out "$OUT/skinny" 2>&1 | grep -E "^\| " | tail -15
timeout ${T_KERNELS:-150} python -m mlra.cli bench decode --variants mla,mlra4_tp4,mlra4_fused,gqa_tp8 \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 30 --out "$OUT/decode" 2>&1 \
  | grep -E "^\| " | tail -14
