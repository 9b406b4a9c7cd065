#!/usr/bin/env bash
# 2026-12-04 (ninth session), about 2 minutes: the MLRA-4 and GQA 1 x 8K steps traced program
# by program (trace_step.py) after this session's entries and GQA tiles, for the per-layer
# table that the next step starts from.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/trace_ninth/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python benchmarks/e2e_decode/trace_step.py --variants mlra_4,gqa --contexts 8192 \
  --out "$OUT/trace" 2>&1 | grep -v "^$" | tee "$OUT/log.txt"
