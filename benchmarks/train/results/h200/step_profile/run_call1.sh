#!/usr/bin/env bash
# Whole training step, kernel by kernel: MLA and MLRA-4, 1B presets, 4 x 2048 (issue 18).
# From the repository root: OUT=dir bash benchmarks/train/results/h200/step_profile/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 280 python benchmarks/train/profile_train_step.py --variants mla,mlra_4 \
  --out "$OUT/step_profile" 2>&1 | grep -v Warning
