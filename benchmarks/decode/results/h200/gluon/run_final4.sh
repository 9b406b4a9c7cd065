#!/usr/bin/env bash
# Fourth device call of 2026-12-03 (about 8 minutes): the Gluon kernel as the default for
# 256- and 512-wide streams -- GPU tests (kernel, dispatch, fused bf16 steps, CUDA graphs, the
# one-launch MLP on two streams), issue 12's table, issue 13's batch-1 steps (after; before
# is call 3's), then the ping-pong form's tests and timings (last: new code).
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/gluon/run_final4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py \
  tests/test_kernels.py tests/test_step_kernels.py tests/test_cuda_graphs.py \
  tests/test_mlp_kernel.py -k "(gluon or latent or fused_bf16 or replayed or two_streams) \
  and not pingpong" --tb=line 2>&1 | grep -vE "^\s*$|warnings" | tail -6
timeout 120 python -m mlra bench decode --variants mla,gla2_tp2,mlra4_tp4,mlra4_fused,gqa_tp8 \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 50 --out "$OUT/decode" \
  2>&1 | grep -E "^\||rror" | tail -12
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
run after b1 100 --variants mla,mlra_4,gqa --contexts 8192,131072 --batches 1 --reps 30 \
  --modes fused
timeout 40 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py -k pingpong \
  --tb=line 2>&1 | tail -2
timeout 50 python benchmarks/decode/gluon_configs.py --shapes mlra4_tp4,gla2_tp2 \
  --lengths 1M 2>&1 | grep -E "^\||rror" | tee "$OUT/configs.md" | tail -30
