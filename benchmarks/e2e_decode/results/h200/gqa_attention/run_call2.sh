#!/usr/bin/env bash
# 2026-12-04 (ninth session), second call (about 5 minutes): call 1's faster GQA attention
# parameters (64-token tiles: 2.003 against 2.046-2.058 ms at 1 x 8K) at 8K and 128K, with 2 /
# 3 / 4 stages and 32-token tiles, and at 32 x 16K against the default. The tree has the
# output projection's whole-K entry (merge_up call 7, gqa_attention call 1).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/gqa_attention/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
run() {  # config, batches, contexts
  MLRA_GQA_CONFIG=$1 timeout 90 python benchmarks/e2e_decode/bench_decode.py --variants gqa \
    --contexts $3 --batches $2 --reps 30 --compile-batches "" --modes fused \
    --out "$OUT/tmp" 2>&1 | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[${1:-default}] /" \
    | tee -a "$OUT/log.txt"
}
for cfg in "" '{"block_n": 64}' '{"block_n": 64, "num_stages": 2}' '{"block_n": 64, "num_stages": 4}' \
    '{"block_n": 32}' ""; do
  run "$cfg" 1 8192,131072
done
for cfg in "" '{"block_n": 64}'; do run "$cfg" 32 16384; done
rm -rf "$OUT/tmp"
