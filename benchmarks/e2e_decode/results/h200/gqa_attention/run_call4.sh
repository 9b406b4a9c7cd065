#!/usr/bin/env bash
# 2026-12-04 (ninth session), fourth call (about 5 minutes): the GPU tests that call 3's time
# limit cut (GQA kernel, heuristic and environment config; projections; fused bf16 steps), with
# the heuristic's threshold raised to 1024 tokens per program; GQA 1 x 64K with each tile form.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/gqa_attention/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 300 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_step_kernels.py \
  -k "gqa or skinny_linear_matches or fused_bf16" --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
for cfg in '{"block_n": 64, "num_stages": 2}' '{"block_n": 128, "num_stages": 3}'; do
  MLRA_GQA_CONFIG=$cfg timeout 50 python benchmarks/e2e_decode/bench_decode.py --variants gqa \
    --contexts 65536 --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/tmp" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$cfg] /" | tee -a "$OUT/log.txt"
done
rm -rf "$OUT/tmp"
