#!/usr/bin/env bash
# 2026-12-04 (eighth session), first call (about 7 minutes). From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call1.sh
# 1. The W_UV register preload on / off in the batch-1 step, two alternated pairs (the
#    latency traces of run_call6 had the split merge's last programs 2 us later with it on).
# 2. MLA's per-launch trace with it on / off (its merge and W_UV launches at 512-wide heads).
# 3. Issue 18: the training benchmark's compiled layer split, never run on a GPU before.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
for pair in 1 2; do
  for pre in 1 0; do
    MLRA_STEP_PRELOAD=$pre timeout 80 python benchmarks/e2e_decode/bench_decode.py \
      --variants mlra_4,mla --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
      --modes fused --out "$OUT/decode_p${pre}_$pair" 2>&1 | grep -E "ms, floor|rror" \
      | sed -E "s/, [0-9]+ tok.*//; s/^/[pair $pair preload $pre] /"
  done
done
for pre in 1 0; do
  MLRA_STEP_PRELOAD=$pre timeout 40 python benchmarks/e2e_decode/trace_step.py --variants mla \
    --contexts 8192 --out "$OUT/trace_mla_p$pre" 2>&1 | grep -E "^## |^\| " | sed "s/^/[mla preload $pre] /"
done
PYTHONPATH=$PWD/src timeout 200 python benchmarks/train/bench_train.py --variants mla,mlra_4 \
  --paths fused --steps 6 --warmup 2 --out "$OUT/train_4x2048_fused.json" > "$OUT/train.txt" 2>&1
echo "bench_train rc=$?"; tail -40 "$OUT/train.txt"
