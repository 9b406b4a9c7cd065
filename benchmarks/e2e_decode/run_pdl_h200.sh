#!/usr/bin/env bash
# One device call (about 10 minutes; T_TESTS, default 240 s, bounds the GPU tests, which
# need more than 120 s at real sizes): the PDL forms of the step kernels checked on the GPU; the
# fused decode step with programmatic dependent launch + L2 prefetch beside the same kernels
# launched plainly, and beside the step of the commit the session started from (its src/ and
# benchmarks/e2e_decode/ carried as .baseline/: `git archive START src benchmarks/e2e_decode |
# tar -x -C .baseline`), all in one run; the projections alone; a profile of the new step.
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
RES=${RES:-/tmp/pdl_results}  # everything lands here; $OUT gets one archive, refreshed per step
mkdir -p "$OUT" "$RES"
source benchmarks/e2e_decode/side_by_side.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
PYTHONPATH=$PWD/src timeout ${T_TESTS:-240} python -m pytest -q -x -p no:cacheprovider \
  tests/test_pdl.py tests/test_step_kernels.py 2>&1 | tail -3
B1="--variants mlra_4,gqa,mla --contexts 8192,131072 --batches 1 --reps 30"
B32="--variants mlra_4 --contexts 16384 --batches 32 --reps 15"
run after b1 170 $B1 --modes fused,fused-nopdl --budget-s 150
run before b1 90 $B1 --modes fused --budget-s 75
run after b32 45 $B32 --modes fused
run before b32 45 $B32 --modes fused
PYTHONPATH=$PWD/src timeout 50 python benchmarks/e2e_decode/bench_skinny.py --rows 1 \
  --out "$RES/skinny" 2>&1 | grep -E "^\| " | tail -8
pack
PYTHONPATH=$PWD/src timeout 45 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 \
  --modes fused --top 8 --out "$RES/profile" 2>&1 | grep -E "^## |^\| " | head -11
pack
