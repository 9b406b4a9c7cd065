#!/usr/bin/env bash
# Prepared in the fourteenth session (2026-12-04) as call 4, now call 5 (the fifteenth split
# call 3 in two), to follow run_call4.sh on its warm machine (about 3.5 minutes): MLRA-4's
# 1 x 8K step traced (trace_step.py) with each of the prepared forms: the MLP's successor 4
# loop steps early, the MLP's first 4 units per program fetched into L2 by the output
# projection, the resident projections' products on the tensor cores; then (fifteenth session) the MLP's barrier diagnostic (when each program counted in, i.e.
# finished all its units) at layer 12 without and with the run-time tail of 2 steps: the
# spread of those marks is what the tail is meant to narrow.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
for form in next4 l2units4 mma; do
  echo "trace: $form" | tee -a "$OUT/log.txt"
  unset MLRA_MLP_CONFIG MLRA_MLP_L2_UNITS MLRA_RESIDENT_CONFIG
  case $form in
    next4) export MLRA_MLP_CONFIG='{"next_left": 4}' ;;
    l2units4) export MLRA_MLP_L2_UNITS=4 ;;
    mma) export MLRA_RESIDENT_CONFIG='{"products": "mma"}' ;;
  esac
  timeout 60 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
    --out "$OUT/tmp/trace_$form" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
for form in default tail2; do
  echo "trace (MLRA_MLP_DIAG=barrier, layer 12): $form" | tee -a "$OUT/log.txt"
  unset MLRA_MLP_CONFIG MLRA_MLP_L2_UNITS MLRA_RESIDENT_CONFIG
  [ $form = tail2 ] && export MLRA_MLP_CONFIG='{"tail_steps": 2}'
  MLRA_MLP_DIAG=barrier timeout 60 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
    --contexts 8192 --dump-layer 12 --out "$OUT/tmp/trace_diag_$form" 2>&1 | grep -E "^\||rror|mlp" \
    | tee -a "$OUT/log.txt"
done
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
