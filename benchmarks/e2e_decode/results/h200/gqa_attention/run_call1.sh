#!/usr/bin/env bash
# 2026-12-04 (ninth session), about 5 minutes: GQA's batch-1 step at 8K (0.01 ms above issue
# 13's 1.4x) against its attention kernel's launch parameters, set through the new
# MLRA_GQA_CONFIG (tiles, pipeline depth, warps, split count; default: 128-token tiles, 3
# stages, 4 warps, 32 splits x 6 KV heads = 192 programs); then the output projection's
# whole-K entry (merge_up call 7: -12 us for MLRA-4, +4 for GQA) inside MLA's step.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/gqa_attention/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
i=0
for cfg in "" '{"num_splits": 44}' '{"num_splits": 22}' '{"num_splits": 16}' '{"block_n": 64}' \
    '{"num_stages": 4}' '{"num_stages": 2}' '{"num_warps": 8}' ""; do
  i=$((i + 1))
  MLRA_GQA_CONFIG=$cfg timeout 60 python benchmarks/e2e_decode/bench_decode.py --variants gqa \
    --contexts 8192 --batches 1 --reps 30 --compile-batches "" --modes fused \
    --out "$OUT/gqa_$i" 2>&1 | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[${cfg:-default}] /"
done
timeout 150 python benchmarks/e2e_decode/step_tune.py --variant mla --context 8192 --rounds 5 \
  --shapes m1:k3072:n3072:plain --out "$OUT/tune_mla_8192" 2>&1 | grep -E "^\|" | head -12
