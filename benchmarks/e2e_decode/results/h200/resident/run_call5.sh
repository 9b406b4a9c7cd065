#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 1.5 minutes. Diagnostic: with
# MLRA_RESIDENT_LANDED_MARK=1 the resident projection waits for all its TMA boxes right after
# its PDL wait and writes its third mark there (before reading x), so "main" = how long after
# the release the weights were still landing, "tail" = reading x, the products, the store.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
MLRA_RESIDENT_LANDED_MARK=1 timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --dump-layer 12 --out "$OUT/trace_landed" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
