#!/usr/bin/env bash
# The compiled loss (no fp32 copy of the logits) against the start tree (carried as .baseline),
# one call: training benchmark 4 x 2048 on the fused path, after then before; then the step
# profile of the new tree. From the repository root (.baseline carried):
# OUT=dir bash benchmarks/train/results/h200/loss/run_call1.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
args="--variants mla,gqa,mlra_4 --paths fused --steps 8 --warmup 2"
echo "## after (this tree)"
PYTHONPATH=$PWD/src timeout 260 python benchmarks/train/bench_train.py $args \
  --out "$OUT/after.json" 2>&1 | grep -E "^\||^NVIDIA|ms/step"
echo "## before (.baseline)"
PYTHONPATH=$PWD/.baseline/src timeout 200 python .baseline/benchmarks/train/bench_train.py $args \
  --no-profile --out "$OUT/before.json" 2>&1 | grep -E "^\||^NVIDIA|ms/step"
echo "## step profile (this tree)"
PYTHONPATH=$PWD/src timeout 100 python benchmarks/train/profile_train_step.py --variants mla \
  --top 12 --out "$OUT/profile" 2>&1 | grep -E "^\||^##"
