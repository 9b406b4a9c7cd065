#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 5 minutes. Call 4: the output projection's weights land
# 2-5 us after its programs start (18.9 MB requested at once by 384 programs) and its release
# comes 2.5-3 us after W_UV's last program, as if everything else queued behind that burst.
# In-step A/B (env_sweep.py): at most 1 or 2 TMA boxes in flight per resident program (the next
# box issued once the one before has landed), with and without the early triggers of call 3.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
R='"MLRA_RESIDENT_CONFIG"'
U='"MLRA_STEP_UP_EARLY_NEXT"'
C="{\"default\": {}, \"inflight 1\": {$R: {\"inflight\": 1}}, \"inflight 2\": {$R: {\"inflight\": 2}},
 \"both triggers\": {$U: \"1\", $R: {\"trigger\": \"entry\"}},
 \"inflight 1, both triggers\": {$U: \"1\", $R: {\"trigger\": \"entry\", \"inflight\": 1}}}"
for v in mlra_4 mla gqa; do
  timeout 160 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
