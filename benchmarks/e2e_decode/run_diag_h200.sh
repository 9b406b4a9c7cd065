#!/usr/bin/env bash
# One device call (about 4 minutes): where the batch-32 and the 128K batch-1 MLRA-4 steps go
# (profiles), and the projections alone at 1 and 32 rows beside cuBLAS. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 80 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --batch 32 \
  --context 16384 --modes fused --top 12 --reps 10 --out "$OUT/profile-b32" 2>&1 \
  | grep -E "^## |^\| " | head -16
timeout 60 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --context 131072 \
  --modes fused --top 8 --out "$OUT/profile-128k" 2>&1 | grep -E "^## |^\| " | head -12
timeout 90 python benchmarks/e2e_decode/bench_skinny.py --rows 1,32 --out "$OUT/skinny" 2>&1 \
  | grep -E "^\| " | tail -16
