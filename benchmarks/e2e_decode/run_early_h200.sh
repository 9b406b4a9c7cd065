#!/usr/bin/env bash
# One device call (about 6 minutes): batch-1 steps with the projections letting the next
# kernel launch right after their wait (MLRA_PDL_EARLY) and a 24 MB prefetch budget, beside
# the default, in one run; the one-row projections loaded straight into registers.
# Ran at commit d55b6fa; the experiment modes were removed after this measurement (slower),
# so re-run it from that commit. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python benchmarks/e2e_decode/bench_skinny.py --rows 1 --sweep --sweep-rows 1 \
  --sweep-set direct --quick --out "$OUT/skinny-direct" 2>&1 | grep -E "^\| |^[0-9]+ s" | tail -9
timeout 330 python benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa \
  --contexts 8192 --batches 1 --reps 30 \
  --modes fused,fused-early,fused-pf24,fused-early-pf24 --out "$OUT/early-8k" 2>&1 | tail -16
