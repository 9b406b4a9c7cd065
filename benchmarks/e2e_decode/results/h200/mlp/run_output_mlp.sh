#!/usr/bin/env bash
# Ran at commit 1964ca8 (the chained form was slower and is reverted; that commit has it).
# Fifth device call (about 5 minutes): the output projection chained with the one-launch MLP
# (one launch, two grid barriers). GPU tests of the kernel, then batch-1 steps with it
# (default) and without it (MLRA_OUTPUT_MLP=0: the output projection as its own launch, the
# previous commit's form) in one run, then the fused-step GPU tests.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp/run_output_mlp.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 60 python -m pytest -q -x -p no:cacheprovider tests/test_mlp_kernel.py -k output 2>&1 \
  | tail -2
RES=$OUT/steps5; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for form in 0 1; do
  export MLRA_OUTPUT_MLP=$form
  run after "b1-output-mlp-$form" 90 --variants mlra_4,mla,gqa --contexts 8192 --batches 1 \
    --reps 30 --modes fused | sed "s/^after/output_mlp=$form/"
done
export MLRA_OUTPUT_MLP=1
run after b1-128k 40 --variants mlra_4 --contexts 131072 --batches 1 --reps 30 --modes fused
timeout 60 python -m pytest -q -x -p no:cacheprovider tests/test_step_kernels.py -k fused 2>&1 \
  | tail -2
