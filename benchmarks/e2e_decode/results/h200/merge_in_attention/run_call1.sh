#!/usr/bin/env bash
# Prepared 2026-12-04 (ninth session), NOT YET RUN (the session's device time was spent),
# about 5 minutes: MLRA-4's latent attention merging its own splits (LatentKernelConfig
# merge_in_kernel: after its main loop each program lets the next launch go, stores its
# partials, meets the others at a grid barrier -- one cooperative launch, 264 programs at
# 1 x 8K, two per SM by the sm_90 compile on the CPU: 255 registers, 99 KB of shared memory -- and merges a share
# of the row tiles), against the separate merge launch (today 4.5 us of each layer's 83.7,
# results/h200/trace_ninth). GPU tests first; then the batch-1 step with it off / on / off /
# on (8K and 128K); then the trace with it on (the latent launch's tail against latent + merge).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/merge_in_attention/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 120 python -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_pdl.py \
  -k "merged_inside or latent_merging or pdl_step" --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
for merge in false true false true; do
  MLRA_LATENT_CONFIG="{\"merge_in_kernel\": $merge}" timeout 60 python \
    benchmarks/e2e_decode/bench_decode.py --variants mlra_4 --contexts 8192,131072 --batches 1 \
    --reps 30 --compile-batches "" --modes fused --out "$OUT/tmp" 2>&1 \
    | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[merge $merge] /" | tee -a "$OUT/log.txt"
done
MLRA_LATENT_CONFIG='{"merge_in_kernel": true}' timeout 60 python benchmarks/e2e_decode/trace_step.py \
  --variants mlra_4 --contexts 8192 --out "$OUT/trace_on" 2>&1 | grep -v "^$" | tee -a "$OUT/log.txt"
rm -rf "$OUT/tmp"
