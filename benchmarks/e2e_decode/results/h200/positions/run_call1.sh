#!/usr/bin/env bash
# 2026-12-03 (fifth session), call 1: (a) the prepared early_tiles/run_call2.sh (MLA steps with
# Gluon configurations of less shared memory; the GPU part of the MLRA_GLUON_CONFIG test);
# (b) step profiles with the per-launch-position table (which of a layer's projection launches
# holds the time): MLRA-4 and MLA at 1 x 8K, MLA at 1 x 128K.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/positions/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
OUT=$OUT/gluon_smem bash benchmarks/e2e_decode/results/h200/early_tiles/run_call2.sh
for vc in mlra_4:8192 mla:8192 mla:131072; do
  v=${vc%%:*}; c=${vc##*:}
  timeout 120 python benchmarks/e2e_decode/profile_step.py --variant "$v" --context "$c" \
    --modes fused --reps 20 --top 10 --out "$OUT/profile-$v-$c" 2>&1 | grep -E "^#|^\|" | grep -v "^|---"
done
