#!/usr/bin/env bash
# The second device call of the session: the decode step fused vs module-by-module at batch 1
# and 32, a profile of the fused step, and the generate benchmark. OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 80 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa \
  --contexts 8192,131072 --batches 1 --modes fused --reps 30 --out "$OUT/e2e" 2>&1 \
  | grep -E "ms, floor|Error|error" | tail -14
timeout 40 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4 \
  --contexts 16384 --batches 32 --modes fused,graph --reps 15 --out "$OUT/b32" 2>&1 \
  | grep -E "ms, floor|Error|error" | tail -4
timeout 45 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --modes fused \
  --top 8 --out "$OUT/profile" 2>&1 | grep -E "^## |^\| " | head -12
timeout 100 python benchmarks/e2e_decode/bench_generate.py --variants mlra_4,gqa \
  --budget-s 70 --out "$OUT/generate" 2>&1 | grep -E "x$|rror|wrote" | tail -8
cd "$OUT" && tar czf results.tgz e2e b32 profile generate; rm -rf e2e b32 profile generate
