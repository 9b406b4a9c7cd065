#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 2 minutes, on the tree of 256105a plus one switch
# (MLRA_UV_OPROJ=plain: the one-launch W_UV + output projection launched plainly instead of
# cooperatively; an experiment, not kept). Call 10: the cooperative grid started only once the
# merge had left. In-step A/B of two launches / one cooperative / one plain, MLRA-4 1 x 8K;
# then the plain form traced.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call11.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
C="{\"two launches\": {\"MLRA_UV_OPROJ\": \"0\"}, \"one, cooperative\": {\"MLRA_UV_OPROJ\": \"1\"},
 \"one, plain\": {\"MLRA_UV_OPROJ\": \"plain\"}}"
timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant mlra_4 --rounds 2 --out "$OUT/sweep_mlra_4" \
  --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
MLRA_UV_OPROJ=plain timeout 70 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --dump-layer 12 --out "$OUT/trace_plain" 2>&1 | grep -E "^\||^per step|^layer|rror" \
  | tee -a "$OUT/log.txt"
