#!/usr/bin/env bash
# 2026-12-04, fourth call (about 6 minutes): the two changes from the per-program trace (the
# query preparation's cache row loaded before its stores; the MLP barrier by generation
# number) -- GPU tests, the batch-1 table after / before (the session's start tree carried as
# .baseline), and the MLRA-4 8K trace after. From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call4.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 170 python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py \
  tests/test_pdl.py tests/test_kernel_trace.py tests/test_step_kernels.py -k "mlp or pdl or trace or prepare or fused" \
  --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
for side in after before; do
  src=$PWD/src; script=benchmarks/e2e_decode/bench_decode.py
  [ $side = before ] && src=$PWD/.baseline/src && script=.baseline/$script
  PYTHONPATH=$src timeout 100 python $script --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/decode_$side" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$side] /"
done
PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode timeout 60 python benchmarks/e2e_decode/trace_step.py \
  --variants mlra_4 --contexts 8192 --dump-layer 12 --out "$OUT/trace_mlra_4" 2>&1 | grep -v "^$"
