#!/usr/bin/env bash
# 2026-12-04, last call (about 1 minute, the session's remaining device time): trace_step.py
# after its refactor (profile_step.capture_step), MLRA-4 8K with the W_UV preload on (the
# default) and off, to see whether the preload delays the split merge's last programs.
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call6.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
for p in 1 0; do
  MLRA_STEP_PRELOAD=$p timeout 40 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
    --contexts 8192 --out "$OUT/trace_preload$p" 2>&1 | grep -E "^## |merge|up\[|latent\[" \
    | sed "s/^/[W_UV preload $p] /"
done
