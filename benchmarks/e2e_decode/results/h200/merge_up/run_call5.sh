#!/usr/bin/env bash
# 2026-12-04 (eighth session), fifth call (about 4 minutes): MLA's batch-1 attention (Gluon)
# against its split count, a temporary knob MLRA_GLUON_SPLITS. At 8K the wave model gives
# every 64-token tile its own split: each program reads 74 KB of cache and writes a 49 KB fp32
# partial (24 rows x 512) that the merge reads back -- 6.3 MB of partials per layer against
# 9.4 MB of cache. MLA batch-1 step at 8K with the default and 96 / 64 / 43 / 32 / 22 splits,
# at 128K with the default and 64. From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
bench() {  # context, splits ("" = default)
  MLRA_GLUON_SPLITS=$2 timeout 60 python benchmarks/e2e_decode/bench_decode.py --variants mla \
    --contexts $1 --batches 1 --reps 30 --compile-batches "" --modes fused \
    --out "$OUT/decode_$1_s$2" 2>&1 | grep -E "ms, floor|rror" \
    | sed -E "s/, [0-9]+ tok.*//; s/^/[splits ${2:-default}] /"
}
MLRA_GLUON_SPLITS_PRINT=1 timeout 60 python benchmarks/e2e_decode/bench_decode.py --variants mla \
  --contexts 8192,131072 --batches 1 --reps 3 --compile-batches "" --modes fused \
  --out "$OUT/print" 2>&1 | grep -E "gluon splits" | sort | uniq -c
for s in "" 96 64 43 32 22 ""; do bench 8192 "$s"; done
for s in "" 64; do bench 131072 "$s"; done
