#!/usr/bin/env bash
# One device step (about 2 minutes): the latent/GQA decode kernels with programmatic dependent
# launch (the split merge launched while the attention kernel drains) beside plain launches,
# in one run. OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src:$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-out}
ARGS="--variants ${VARIANTS:-mlra4_tp4,mlra4_fused,mla,gqa_tp8} --lengths 128K,1M,2M --batches 128
  --batch-lengths 16K --reps 30 --no-check"
for pdl in 0 1; do
  MLRA_PDL=$pdl timeout ${T_BENCH:-100} python -m mlra.cli bench decode $ARGS \
    --out "$OUT/decode-pdl$pdl" 2>&1 | grep -E "^\| " | tail -16
done
