#!/usr/bin/env bash
# One device call: the decode-step kernel tests at real sizes, the projection kernel against
# cuBLAS (with a launch-parameter sweep), the decode step fused vs module-by-module against its
# floor, and a profile of the fused step. Usage (on the GPU machine): bash THIS_FILE
export PYTHONPATH=$PWD/src
OUT=${OUT:-out}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv
timeout 150 python -m pytest tests/test_step_kernels.py -x -q 2>&1 | tail -5
timeout ${SKINNY_S:-200} python benchmarks/e2e_decode/bench_skinny.py --rows 1,8,32 --sweep \
  --out "$OUT/skinny" > "$OUT/skinny.log" 2>&1; tail -3 "$OUT/skinny.log"
timeout 200 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa \
  --contexts 8192,131072 --batches 1 --modes fused,graph --reps 30 --out "$OUT/e2e" 2>&1 \
  | grep -E "ms, floor|Error|error" | tail -20
timeout 150 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,gqa \
  --contexts 16384 --batches 32 --modes fused,graph --reps 20 --out "$OUT/e2e_b32" 2>&1 \
  | grep -E "ms, floor|Error|error" | tail -8
timeout 90 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --modes fused \
  --top 16 --out "$OUT/profile" 2>&1 | grep -E "^## |^\| " | head -20
cat "$OUT/skinny/skinny.md"
