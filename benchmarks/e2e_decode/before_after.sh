#!/usr/bin/env bash
# The end-to-end decode benchmark of two source trees side by side in one run on one GPU:
# BEFORE_SRC (e.g. an older commit's src/, from `git archive COMMIT src | tar -x -C DIR`) and
# this checkout's src/, interleaved (graph-only rows for three variants, then MLRA-4 compiled),
# so that a refactor can be shown not to slow the step. Then the GPU kernel / CUDA-graph tests
# of this checkout.
#
#   bash benchmarks/e2e_decode/before_after.sh BEFORE_SRC OUT_DIR
#
# VARIANTS (default mlra_4,mla,gqa) picks the graph-only rows; COMPILED (default mlra_4; empty
# for none) the variant also timed compiled; TESTS (default: the kernel, CUDA-graph and decoding
# tests) the GPU tests run afterwards.
set -uo pipefail
before=$1
out=$2
variants=${VARIANTS:-mlra_4,mla,gqa}
compiled=${COMPILED-mlra_4}
tests=${TESTS:-tests/test_kernels.py tests/test_cuda_graphs.py tests/test_decoding.py}
common=(--contexts 8192,131072 --batches 1 --reps 30 --budget-s 240)
run() {  # tree label, src dir, extra args
  PYTHONPATH="$2" python benchmarks/e2e_decode/bench_decode.py --out "$out/$1" "${@:3}" \
    "${common[@]}" 2>&1 | tee "$out/$1.log" | grep -E "step|skipped|Error" || true
}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
run before_graph "$before" --variants "$variants" --compile-batches ''
run after_graph "$PWD/src" --variants "$variants" --compile-batches ''
if [ -n "$compiled" ]; then
  run before_compile "$before" --variants "$compiled" --compile-batches 1
  run after_compile "$PWD/src" --variants "$compiled" --compile-batches 1
fi
# shellcheck disable=SC2086
PYTHONPATH="$PWD/src" timeout 300 python -m pytest -q -x $tests 2>&1 \
  | tee "$out/gpu_tests.log" | tail -3
