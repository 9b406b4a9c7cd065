#!/usr/bin/env bash
# Final check of the session (2026-12-03): GPU tests of the changed code, the training
# benchmark after / before (the start tree carried as .baseline: compiled loss + clipping
# factor in the fused AdamW against neither), 1 x 8192 after, and issue 13's batch-1 decode
# table after / before. From the repository root (.baseline carried):
# OUT=dir bash benchmarks/train/results/h200/loss/run_call2.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 90 python -m pytest -p no:cacheprovider tests/test_loss.py \
  tests/test_pdl.py --tb=short > "$OUT/pytest1.txt" 2>&1
echo "pytest 1 rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest1.txt" | tail -5
PYTHONPATH=$PWD/src timeout 120 python -m pytest -p no:cacheprovider tests/test_step_kernels.py \
  -k "skinny or prepare_and_up or w_uv or fused_bf16" --tb=short > "$OUT/pytest2.txt" 2>&1
echo "pytest 2 rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest2.txt" | tail -5
args="--variants mla,gqa,mlra_4 --paths fused --steps 8 --warmup 2"
echo "## after (this tree)"
PYTHONPATH=$PWD/src timeout 200 python benchmarks/train/bench_train.py $args --no-profile \
  --out "$OUT/after.json" 2>&1 | grep -E "^\||^NVIDIA"
echo "## before (.baseline)"
PYTHONPATH=$PWD/.baseline/src timeout 200 python .baseline/benchmarks/train/bench_train.py \
  $args --no-profile --out "$OUT/before.json" 2>&1 | grep -E "^\||^NVIDIA"
echo "## after, 1 x 8192"
PYTHONPATH=$PWD/src timeout 150 python benchmarks/train/bench_train.py --variants mla,mlra_4 \
  --paths fused --batch 1 --seq 8192 --steps 6 --warmup 2 --no-profile \
  --out "$OUT/after_8k.json" 2>&1 | grep -E "^\||^NVIDIA"
for side in after before; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 100 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /"
done
