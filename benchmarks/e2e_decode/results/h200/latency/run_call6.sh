#!/usr/bin/env bash
# Prepared 2026-12-04, NOT YET RUN (the session's device time ran out): trace_step.py after
# its refactor (profile_step.capture_step; untested on a GPU since), MLRA-4 8K with the W_UV
# preload on (the default) and off, to see whether the preload delays the split merge's last
# programs. About 1 minute.
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call6.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
for p in 1 0; do
  MLRA_STEP_PRELOAD=$p timeout 40 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
    --contexts 8192 --out "$OUT/trace_preload$p" 2>&1 | grep -E "^## |merge|up\[|latent\[" \
    | sed "s/^/[W_UV preload $p] /"
done
