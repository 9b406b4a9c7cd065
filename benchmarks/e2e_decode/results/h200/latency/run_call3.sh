#!/usr/bin/env bash
# 2026-12-04, third call (about 2 minutes): every program's marks of one layer (layer 12) of
# MLRA-4's batch-1 step at 8K, to see which programs end last in the query preparation, the
# split merge and the MLP's tail. From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 120 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
  --dump-layer 12 --out "$OUT/trace_mlra_4" 2>&1 | grep -v "^$"
