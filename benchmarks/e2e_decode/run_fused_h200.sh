#!/usr/bin/env bash
# One device call: the decode-step kernel tests at real sizes; the projection kernel against
# cuBLAS with a launch-parameter sweep (writing skinny_tuned.json, used by what follows); the
# decode step fused vs module-by-module against its floor at batch 1 and 32; a profile of the
# fused step. Usage (on the GPU machine): OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src
OUT=${OUT:-out}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout ${TEST_S:-90} python -m pytest tests/test_step_kernels.py -x -q 2>&1 | tail -3
mkdir -p "$OUT/skinny"
timeout ${SKINNY_S:-150} python benchmarks/e2e_decode/bench_skinny.py --rows 1,8,32 --sweep \
  --sweep-rows 1,8 --out "$OUT/skinny" > "$OUT/skinny/log.txt" 2>&1 || true
tail -2 "$OUT/skinny/log.txt"
export MLRA_SKINNY_TUNED=$OUT/skinny/skinny_tuned.json
timeout ${E2E_S:-150} python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa \
  --contexts 8192,131072 --batches 1 --modes fused,graph --reps 30 --out "$OUT/e2e" 2>&1 \
  | grep -E "ms, floor|Error|error" | tail -20
timeout ${B32_S:-80} python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,gqa \
  --contexts 16384 --batches 32 --modes fused,graph --reps 15 --out "$OUT/b32" 2>&1 \
  | grep -E "ms, floor|Error|error" | tail -8
timeout 50 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --modes fused \
  --top 14 --out "$OUT/profile" 2>&1 | grep -E "^## |^\| " | head -18
cat "$OUT/skinny/skinny.md"
cd "$OUT" && tar czf results.tgz skinny e2e b32 profile && rm -rf skinny e2e b32 profile
