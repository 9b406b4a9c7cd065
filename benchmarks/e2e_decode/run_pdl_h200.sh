#!/usr/bin/env bash
# One device call: the PDL forms of the step kernels checked on the GPU, then the fused decode
# step with PDL + L2 prefetch, PDL alone and plain launches side by side in one run (and the
# projections alone, bench_skinny.py, with the same three forms).
# OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
timeout ${TESTS_TIMEOUT:-200} python -m pytest -q -x -p no:cacheprovider tests/test_pdl.py \
  tests/test_step_kernels.py 2>&1 | tail -4
timeout ${SKINNY_TIMEOUT:-90} python benchmarks/e2e_decode/bench_skinny.py --rows 1,8 \
  --out "$OUT/skinny" 2>&1 | grep -E "^\| " | tail -16
timeout ${BENCH_TIMEOUT:-300} python benchmarks/e2e_decode/bench_decode.py \
  --variants ${VARIANTS:-mlra_4,gqa,mla} --contexts ${CONTEXTS:-8192,131072} --batches 1 \
  --modes fused,fused-noprefetch,fused-nopdl --reps 30 --budget-s ${BUDGET_S:-240} \
  --out "$OUT/e2e" 2>&1 | grep -E "ms, floor|Error|error|rror:" | tail -24
