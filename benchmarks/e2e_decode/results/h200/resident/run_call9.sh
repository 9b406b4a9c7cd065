#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 2.5 minutes: the output projection (18.9 MB) was left on
# the Triton kernel after call 2, measured with one-chunk boxes. With the 4-chunk boxes of
# call 4: default (output projection on Triton) against no size cap, in-step, 8K.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call9.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
C='{"default": {}, "no cap": {"MLRA_RESIDENT_CONFIG": {"max_mb": 0}}}'
for v in mlra_4 mla gqa; do
  echo "== $v 8192" | tee -a "$OUT/log.txt"
  timeout 60 python benchmarks/e2e_decode/env_sweep.py --variant $v --context 8192 --rounds 4 \
    --candidates "$C" --out "$OUT/ab_${v}_8192" 2>&1 | grep -E "^\| [^c-]|rror" | tee -a "$OUT/log.txt"
done
