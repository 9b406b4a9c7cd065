#!/usr/bin/env bash
# The first device call of the next session (about 8 minutes; carry .carry for FlashMLA):
# issue 12's value split for MLA beside the default and FlashMLA (run_value_split_h200.sh),
# issue 13's split count at batch 1 (the attention alone, explicit split factors: the wave
# model picks 64 at 8K for MLRA-4's 4 programs, 32 measured faster alone on 2026-12-03), and
# the 256-wide streams (run_w256_h200.sh). OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src:$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-out}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
OUT=$OUT/vs bash benchmarks/decode/run_value_split_h200.sh
timeout 150 python benchmarks/decode/tune.py --reps 30 --no-breakdown --out "$OUT/splits" \
  --shapes mlra4_2p9b,mla_2p9b --points 1x8K,1x128K --split-list 8,16,24,32,48,64,128 \
  --configs "64,4,5,1,1,64;64,8,2,1,1,0" 2>&1 | grep -E "us |best|\(" | grep -v "^{" | tail -30
OUT=$OUT/w256 bash benchmarks/decode/run_w256_h200.sh
