#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 1.5 minutes. Diagnostic: with MLRA_RESIDENT_DIAG=x the
# resident projection writes its third mark once x is read, normed and staged in shared
# memory, so "main" = reading x, "tail" = the products from shared memory and the store.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call7.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
MLRA_RESIDENT_DIAG=x timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --dump-layer 12 --out "$OUT/trace_x" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
