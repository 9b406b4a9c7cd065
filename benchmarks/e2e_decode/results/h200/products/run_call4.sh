#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 1.5 minutes. Diagnostic: does the output projection's
# release (3.3-3.6 us after W_UV's last program) wait for its own weights? With
# MLRA_RESIDENT_DIAG=landed_before_wait every resident program waits for all its TMA boxes
# before its PDL wait and marks that moment (third mark), so the per-program dump shows when the
# weights landed against the release. Default triggers, then both early triggers (call 3).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
MLRA_RESIDENT_DIAG=landed_before_wait timeout 80 python benchmarks/e2e_decode/trace_step.py \
  --variants mlra_4 --contexts 8192 --dump-layer 12 --out "$OUT/trace_landed" 2>&1 \
  | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
MLRA_RESIDENT_DIAG=landed_before_wait MLRA_STEP_UP_EARLY_NEXT=1 MLRA_RESIDENT_CONFIG='{"trigger": "entry"}' \
  timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
  --dump-layer 12 --out "$OUT/trace_landed_both" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
