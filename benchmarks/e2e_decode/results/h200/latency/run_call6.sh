#!/usr/bin/env bash
# Prepared 2026-12-04, run in the next session at 8be28ac (call6/, read in ../merge_up/README.md):
# the next questions of README.md's last section, by traces only (no code change; about 2 minutes), MLRA-4
# at 1 x 8K. It is also the first GPU run of trace_step.py since it took
# profile_step.capture_step instead of its own copy. From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call6.sh
# 1. does the W_UV preload delay the split merge's last programs? (preload on / off)
# 2. the MLP's 3.5 us tail against its form: two programs per multiprocessor; two launches
# 3. the attention's per-program time against its tile shape and pipeline: TMA off; 3 stages;
#    32-row tiles
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
trace() {  # tag, then environment assignments
  local tag=$1; shift
  env "$@" timeout 40 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
    --contexts 8192 --out "$OUT/trace_$tag" 2>&1 | grep -E "^## |^\| .(skinny|prepare|latent|merge|up|mlp)" \
    | sed "s/^/[$tag] /"
}
trace default MLRA_STEP_PRELOAD=1
trace no_w_uv_preload MLRA_STEP_PRELOAD=0
trace mlp_2_per_sm 'MLRA_MLP_CONFIG={"per_sm": 2}'
trace mlp_two_launches 'MLRA_MLP_CONFIG={"one_launch": false}'
trace latent_no_tma 'MLRA_LATENT_CONFIG={"use_tma": false}'
trace latent_3_stages 'MLRA_LATENT_CONFIG={"num_stages": 3}'
trace latent_n32 'MLRA_LATENT_CONFIG={"block_n": 32}'
