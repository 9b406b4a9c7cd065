#!/usr/bin/env bash
# Tenth session (2026-12-04), about 4 minutes (call 2: smaller budgets): the L2 prefetch before each PDL wait, budget
# and whole reads (MLRA_PREFETCH), inside the batch-1 step (env_sweep.py, 3 interleaved
# rounds). Today every launch prefetches within 8 MiB, rounded down to a power of two per
# program: MLRA-4's norm + q/kv down 32 of its 48 lines per row (6.5 of 9.8 MB) although it
# starts 2.85 us before its wait (results/h200/trace_ninth), the output projection 16 of 48.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/prefetch_budget/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
P='"MLRA_PREFETCH"'
C="{\"default\": {}, \"none\": {\"MLRA_PDL_PREFETCH\": \"0\"}, \"2\": {$P: {\"mb\": 2}}, \"4\": {$P: {\"mb\": 4}},
 \"6\": {$P: {\"mb\": 6}}, \"4 whole\": {$P: {\"mb\": 4, \"whole\": true}}}"
for vc in mlra_4:8192 mla:8192 gqa:8192 mlra_4:131072 mla:131072; do
  v=${vc%%:*}; c=${vc##*:}
  echo "== $v $c" | tee -a "$OUT/log.txt"
  timeout 110 python benchmarks/e2e_decode/env_sweep.py --variant $v --context $c --rounds 3 \
    --out "$OUT/${v}_$c" --candidates "$C" 2>&1 | grep -E "^\| [^c-]|rror" \
    | sed -E 's/`[^`]*`//' | tee -a "$OUT/log.txt"
done
