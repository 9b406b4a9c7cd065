#!/usr/bin/env bash
# One device call (about 4 minutes), after the down projection's loop was made pipelined
# (K = 9880): the projections alone at 1 and 32 rows; the one-row down, gate/up and wo
# parameters timed inside the MLRA-4 batch-1 step (step_tune.py); the latent decode kernel's split count at 1 x 8K.
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}
mkdir -p "$OUT"
timeout 60 python benchmarks/e2e_decode/bench_skinny.py --rows 1,32 --quick \
  --out "$OUT/skinny" 2>&1 | grep -E "^\| " | tail -14
timeout 300 python benchmarks/e2e_decode/step_tune.py --variant mlra_4 --context 8192 \
  --rounds 2 --out "$OUT/step-tune" 2>&1 | tail -22
timeout 100 python benchmarks/decode/tune.py --reps 30 --splits three --no-breakdown \
  --shapes mlra4_2p9b --configs "64,4,5,1,1,64" --points 1x8K --out "$OUT/splits" 2>&1 \
  | grep -v "^{" | tail -8
