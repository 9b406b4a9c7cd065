#!/usr/bin/env bash
# 2026-12-04, fifth call (about 6 minutes): GPU tests of this session's kernel changes (the PDL
# step bit for bit, also with the query up-projection launched early; the query preparation;
# the MLP barrier), then MLRA_EARLY_QUERY_UP=0 / 1 in the batch-1 step (MLRA-4 and MLA), and the
# MLRA-4 8K trace with it on. From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call5.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 python -m pytest -p no:cacheprovider -v tests/test_pdl.py tests/test_mlp_kernel.py \
  tests/test_step_kernels.py --tb=short \
  -k "step_in_a_cuda_graph or prepare_and_up or (mlp_kernel and not prefetches)" \
  > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -cE " PASSED" "$OUT/pytest.txt"; grep -E "^E |FAILED|passed|failed|error" "$OUT/pytest.txt" | tail -5
for early in 0 1; do
  MLRA_EARLY_QUERY_UP=$early timeout 80 python benchmarks/e2e_decode/bench_decode.py \
    --variants mlra_4,mla --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
    --modes fused --out "$OUT/decode_early$early" 2>&1 | grep -E "ms, floor|rror" \
    | sed -E "s/, [0-9]+ tok.*//; s/^/[early query up $early] /"
done
MLRA_EARLY_QUERY_UP=1 timeout 50 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --out "$OUT/trace_early1" 2>&1 | grep -v "^$"
