#!/usr/bin/env bash
# First device call of 2026-12-03 (about 8 minutes): the Gluon MLA probe checked and timed
# beside FlashMLA and our Triton MLA kernel (`mlra bench decode`, same run); the GPU tests of
# the per-stream counters; the one-launch MLP as a cooperative grid beside the default, alone
# and in the batch-1 step.
# The probe was removed later (it became mlra.kernels.gluon_latent): check out 309ce2f first.
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/gluon/run_probe1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
P=benchmarks/decode/gluon_mla_probe.py
for cfg in "" "--overlap" "--num-buf 3" "--block-n 32 --num-buf 4" "--wg 1"; do
  timeout 60 python $P --check --bench $cfg 2>&1 | grep -E "^check|^bench|rror" | tail -3
done
timeout 30 python $P --bench --bench-n 2097152 2>&1 | grep -E "^bench|rror" | tail -2
timeout 120 python -m mlra bench decode --variants mla,mlra4_tp4 --lengths 1M,2M --batches 128 \
  --batch-lengths 16K --reps 30 --out "$OUT/decode" 2>&1 | grep -E "^\||rror" | tail -12
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_mlp_kernel.py tests/test_pdl.py \
  tests/test_cuda_graphs.py 2>&1 | tail -3
timeout 60 python benchmarks/e2e_decode/bench_mlp.py --out "$OUT/mlp" 2>&1 | grep "^|" | tail -9
for coop in false true; do
  MLRA_MLP_CONFIG="{\"cooperative\": $coop}" timeout 100 python \
    benchmarks/e2e_decode/bench_decode.py --variants mlra_4,gqa --contexts 8192 --batches 1 \
    --reps 30 --modes fused --out "$OUT/step-coop-$coop" 2>&1 | grep -E "ms, floor|rror" \
    | sed "s/^/coop=$coop /"
done
