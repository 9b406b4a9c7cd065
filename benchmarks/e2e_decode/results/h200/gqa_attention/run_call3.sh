#!/usr/bin/env bash
# 2026-12-04 (ninth session), third call (about 8 minutes): GPU tests of the GQA kernel
# (heuristic, environment config) and of the projection and fused-step kernels; issue 13's
# batch-1 table, the session's start tree 314c483 (carried as .baseline) / this tree (head
# with two stages, output projection's whole-K entry, GQA's short-read tiles); GQA at 16K and
# 32K with each tile form forced, for the heuristic's threshold.
# From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/gqa_attention/run_call3.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 130 python -m pytest -p no:cacheprovider tests/test_kernels.py \
  tests/test_step_kernels.py -k "gqa or skinny_linear_matches or fused_bf16" --tb=short \
  > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
for side in before after; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 130 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /" | tee -a "$OUT/log.txt"
done
for cfg in '{"block_n": 64, "num_stages": 2}' '{"block_n": 128, "num_stages": 3}'; do
  MLRA_GQA_CONFIG=$cfg PYTHONPATH=$PWD/src timeout 70 python benchmarks/e2e_decode/bench_decode.py \
    --variants gqa --contexts 16384,32768 --batches 1 --reps 30 --compile-batches "" --modes fused \
    --out "$OUT/tmp" 2>&1 | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$cfg] /" \
    | tee -a "$OUT/log.txt"
done
rm -rf "$OUT/tmp"
