#!/usr/bin/env bash
# Second device call of 2026-12-03 (about 9 minutes): the Gluon paged latent kernel
# (src/mlra/kernels/gluon_latent.py) -- its GPU tests, issue 12's table (`mlra bench decode`,
# FlashMLA beside, the Gluon kernel as the default on Hopper), the Triton kernel at 1M beside
# it (MLRA_GLUON_LATENT=0), and issue 13's batch-1 steps before (.baseline = b5b8aa0) / after.
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/gluon/run_kernel2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py \
  tests/test_kernels.py -k "gluon or latent" --tb=line 2>&1 | grep -vE "^\s*$|warnings" | tail -15
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_mlp_kernel.py -k transformers \
  --tb=short 2>&1 | grep -E "Error|error|assert" | head -8
timeout 200 python -m mlra bench decode --variants mla,gla2_tp2,mlra4_tp4,mlra4_fused,gqa_tp8 \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 50 --out "$OUT/decode" \
  2>&1 | grep -E "^\||rror" | tail -12
MLRA_GLUON_LATENT=0 timeout 60 python -m mlra bench decode --variants mla,mlra4_tp4 \
  --lengths 1M --batches '' --reps 30 --no-flashmla --out "$OUT/decode-triton" 2>&1 \
  | grep -E "^\||rror" | tail -4
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 110 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
    --modes fused
done
