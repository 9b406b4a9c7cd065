#!/usr/bin/env bash
# One device call (about 5 minutes): issue 13's batch-1 table, the session's starting commit
# (.baseline) beside this tree in one run, and the MLRA-4 8K profile with exposed times.
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
RES=$OUT/b1; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 170 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
    --modes fused
done
timeout 70 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --context 8192 \
  --modes fused --top 7 --reps 10 --out "$OUT/profile-mlra_4-8192" 2>&1 | grep -E "^## |^\| "
