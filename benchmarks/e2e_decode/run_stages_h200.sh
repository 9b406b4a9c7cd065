#!/usr/bin/env bash
# Device call A (about 9 minutes): GPU tests of the latent kernels and the step kernels, then
# the decode step of this tree beside the commit the session started from (carried as
# .baseline/: `git archive START src benchmarks/e2e_decode | tar -x -C .baseline`), batch 1 and
# batch 32, in one run. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
RES=${RES:-/tmp/stage_results}
mkdir -p "$OUT" "$RES"
source benchmarks/e2e_decode/side_by_side.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
PYTHONPATH=$PWD/src timeout ${T_TESTS:-200} python -m pytest -q -x -p no:cacheprovider \
  tests/test_pdl.py tests/test_kernels.py tests/test_step_kernels.py -k "latent or pdl or prepare or fused" 2>&1 | tail -3
B1="--variants mlra_4,gqa,mla --contexts 8192,131072 --batches 1 --reps 30"
B32="--variants mlra_4 --contexts 16384 --batches 32 --reps 15"
run after b1 100 $B1 --modes fused --budget-s 85
run before b1 100 $B1 --modes fused --budget-s 85
run after b32 50 $B32 --modes fused
run before b32 50 $B32 --modes fused
