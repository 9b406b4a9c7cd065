#!/usr/bin/env bash
# 2026-12-04 (eighth session), fourth call (about 5 minutes): the split merge letting the
# W_UV launch start only after its loads and sums (MLRA_MERGE_LATE_NEXT=1, a temporary knob)
# instead of right past its wait -- with the W_UV register preload on, the merge's last
# programs ended 2 us later (latency/call6). MLRA-4 8K traces, then two alternated pairs of
# the batch-1 table (MLRA-4 and MLA, whose Gluon attention uses the same merge).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
for late in 0 1; do
  MLRA_MERGE_LATE_NEXT=$late timeout 40 python benchmarks/e2e_decode/trace_step.py \
    --variants mlra_4 --contexts 8192 --out "$OUT/trace_late$late" 2>&1 \
    | grep -E "^## |^\| .(latent|merge|up|skinny.2)" | sed "s/^/[late $late] /"
done
for pair in 1 2; do
  for late in 0 1; do
    MLRA_MERGE_LATE_NEXT=$late timeout 80 python benchmarks/e2e_decode/bench_decode.py \
      --variants mlra_4,mla --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
      --modes fused --out "$OUT/decode_l${late}_$pair" 2>&1 | grep -E "ms, floor|rror" \
      | sed -E "s/, [0-9]+ tok.*//; s/^/[pair $pair late $late] /"
  done
done
