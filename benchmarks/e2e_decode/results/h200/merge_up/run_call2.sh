#!/usr/bin/env bash
# 2026-12-04 (eighth session), second call (about 8 minutes): the split merge inside the
# one-token W_UV launch (SplitPartials) -- GPU tests, the batch-1 table after (merge in the
# W_UV launch; MLRA_STEP_MERGE=0: its own launch as before) and before (the session's start
# tree carried as .baseline), MLRA-4 8K traces with 16 / 32 outputs per program.
# From the repository root (.baseline carried):
# OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call2.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
PYTHONPATH=$PWD/src timeout 170 python -m pytest -p no:cacheprovider tests/test_step_kernels.py \
  tests/test_kernels.py -k "merges_unmerged or partials or prepare_and_up or fused_bf16" \
  --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |FAILED|passed|failed|error" "$OUT/pytest.txt" | tail -8
bench() {  # tag, source tree, then environment assignments
  local tag=$1 src=$2; shift 2
  local script=benchmarks/e2e_decode/bench_decode.py
  [ "$src" != src ] && script=.baseline/$script
  env "$@" PYTHONPATH=$PWD/$src timeout 80 python $script --variants mlra_4,mla \
    --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" --modes fused \
    --out "$OUT/decode_$tag" 2>&1 | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$tag] /"
}
bench after src
bench before .baseline/src
bench merge_launch src MLRA_STEP_MERGE=0
bench after2 src
trace() {  # tag, then environment assignments
  local tag=$1; shift
  env "$@" PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode timeout 40 python \
    benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 --out "$OUT/trace_$tag" \
    2>&1 | grep -E "^## |^\| .(skinny|prepare|latent|merge|up|mlp)" | sed "s/^/[$tag] /"
}
trace bd16 MLRA_STEP_MERGE=1
trace bd32 MLRA_STEP_MERGE_BD=32
