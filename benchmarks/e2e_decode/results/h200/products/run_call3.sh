#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 5 minutes. Call 2's trace: the output projection's
# programs start only 0.8 us after W_UV's release and its 18.9 MB of weights then stream
# for ~4.5 us, while DRAM idles through most of the attention phase. In-step A/B (env_sweep.py):
# W_UV lets the output projection launch before its own PDL wait (MLRA_STEP_UP_EARLY_NEXT=1), the
# resident projections let their successors launch before their wait (trigger "entry"), both.
# Then the marks of the step with both.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
R='"MLRA_RESIDENT_CONFIG"'
U='"MLRA_STEP_UP_EARLY_NEXT"'
C="{\"default\": {}, \"W_UV early next\": {$U: \"1\"}, \"resident entry\": {$R: {\"trigger\": \"entry\"}},
 \"both\": {$U: \"1\", $R: {\"trigger\": \"entry\"}}}"
for v in mlra_4 mla gqa; do
  timeout 130 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
MLRA_STEP_UP_EARLY_NEXT=1 MLRA_RESIDENT_CONFIG='{"trigger": "entry"}' timeout 80 python \
  benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 --dump-layer 12 \
  --out "$OUT/trace_both" 2>&1 | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
