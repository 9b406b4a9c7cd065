#!/usr/bin/env bash
# 2026-12-04 (eighth session), third call (about 5 minutes). Call 2 found the merge still in a
# launch of its own: MLRA-4's attention plans two programs per multiprocessor, 66 splits per
# stream (135 KB of results per head), over the first form's register limit. Now the W_UV
# launch reads them in chunks (up to 160 KB per head). GPU test, then MLRA-4 8K traces:
# 66 splits merged in W_UV with 16 / 64 outputs per program; 33 splits (ctas_per_sm 1) merged
# in W_UV with 16 / 32 outputs, and by their own launch; 66 by their own launch (as before).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call3.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 120 python -m pytest -p no:cacheprovider tests/test_step_kernels.py \
  -k "merges_unmerged" --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |FAILED|passed|failed|error" "$OUT/pytest.txt" | tail -8
trace() {  # tag, then environment assignments
  local tag=$1; shift
  env "$@" PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode timeout 40 python \
    benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 --out "$OUT/trace_$tag" \
    2>&1 | grep -E "^## |^\| .(latent|merge|up|skinny.2)" | sed "s/^/[$tag] /"
}
trace s66_bd16 MLRA_STEP_MERGE=1
trace s66_bd64 MLRA_STEP_MERGE_BD=64
trace s33_bd16 'MLRA_LATENT_CONFIG={"ctas_per_sm": 1}'
trace s33_bd32 'MLRA_LATENT_CONFIG={"ctas_per_sm": 1}' MLRA_STEP_MERGE_BD=32
trace s33_launch 'MLRA_LATENT_CONFIG={"ctas_per_sm": 1}' MLRA_STEP_MERGE=0
trace s66_launch MLRA_STEP_MERGE=0
