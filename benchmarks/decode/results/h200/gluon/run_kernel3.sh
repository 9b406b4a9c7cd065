#!/usr/bin/env bash
# Third device call of 2026-12-03 (about 8 minutes): the Gluon kernel for 512-wide streams
# only (MLA) -- GPU tests (kernel, dispatch, the fused bf16 step of every variant), issue
# 12's table, issue 13's batch-1 steps before (.baseline = b5b8aa0) / after, and the Gluon
# launch configurations beside the Triton kernel at the narrower shapes.
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/gluon/run_kernel3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py \
  tests/test_kernels.py tests/test_step_kernels.py -k "gluon or latent or fused_bf16" \
  --tb=line 2>&1 | grep -vE "^\s*$|warnings" | tail -8
timeout 150 python -m mlra bench decode --variants mla,gla2_tp2,mlra4_tp4,mlra4_fused,gqa_tp8 \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 50 --out "$OUT/decode" \
  2>&1 | grep -E "^\||rror" | tail -12
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 100 --variants mla,mlra_4 --contexts 8192,131072 --batches 1 --reps 30 \
    --modes fused
done
timeout 90 python benchmarks/decode/gluon_configs.py --shapes mlra4_tp4,gla2_tp2,mla_2p9b \
  --lengths 128K,1M 2>&1 | grep -E "^\||rror" | tee "$OUT/configs.md" | tail -40
