#!/usr/bin/env bash
# One device call (about 4 minutes): the projection kernel's GPU tests (paper shapes, one-row
# down at K = 9880 included) and batch 32 x 16K before (.baseline) / after. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_step_kernels.py -k "skinny" \
  tests/test_pipeline_depth.py 2>&1 | tail -3
RES=$OUT/b32; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b32 80 --variants mlra_4 --contexts 16384 --batches 32 --reps 20 --modes fused
done
