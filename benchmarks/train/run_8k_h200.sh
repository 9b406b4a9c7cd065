#!/usr/bin/env bash
# One device call (about 4 minutes): issue 18's 1 x 8192 point with the fused training
# attention (never measured with it), MLA and MLRA-4 in one run. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 330 python benchmarks/train/bench_train.py --variants mla,mlra_4 --paths fused \
  --batch 1 --seq 8192 --steps 6 --warmup 2 --out "$OUT/train_1x8192_fused.json" 2>&1 | tail -30
