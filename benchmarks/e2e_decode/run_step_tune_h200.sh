#!/usr/bin/env bash
# One device call (about 5 minutes): the one-row down, gate/up and wo parameters timed inside
# the MLRA-4 batch-1 step (step_tune.py), and the latent decode kernel's split count at
# batch 1 x 8K / 128K (tune.py: the heuristic's choice, half and double).
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}
mkdir -p "$OUT"
timeout 330 python benchmarks/e2e_decode/step_tune.py --variant mlra_4 --context 8192 \
  --rounds 3 --out "$OUT/step-tune" 2>&1 | tail -22
timeout 150 python benchmarks/decode/tune.py --reps 30 --splits three --no-breakdown \
  --shapes mlra4_2p9b --configs "64,4,5,1,1,64" --points 1x8K,1x128K --out "$OUT/splits" 2>&1 \
  | grep -v "^{" | tail -12
