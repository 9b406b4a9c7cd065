#!/usr/bin/env bash
# 2026-12-04, second call (about 7 minutes): the per-program kernel trace (new,
# mlra.kernels.kernel_trace) -- its GPU test and the PDL tests, then the batch-1 step traced
# (trace_step.py): MLRA-4 at 8K and 128K, MLA and GQA at 8K (their attention kernels are not
# traced: their time falls into the next launch's gap); then the compiled loss's GPU tests
# with a longer limit (90 s was not enough in call 1). From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python -m pytest -p no:cacheprovider tests/test_kernel_trace.py tests/test_pdl.py \
  --tb=short > "$OUT/pytest_trace.txt" 2>&1
echo "pytest trace+pdl rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest_trace.txt" | tail -4
timeout 120 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192,131072 \
  --out "$OUT/trace_mlra_4" 2>&1 | grep -v "^$"
timeout 100 python benchmarks/e2e_decode/trace_step.py --variants mla,gqa --contexts 8192 \
  --out "$OUT/trace_mla_gqa" 2>&1 | grep -v "^$"
timeout 200 python -m pytest -p no:cacheprovider tests/test_loss.py --tb=short \
  > "$OUT/pytest_loss.txt" 2>&1
echo "pytest loss rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest_loss.txt" | tail -4
