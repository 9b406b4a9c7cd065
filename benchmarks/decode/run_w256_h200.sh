#!/usr/bin/env bash
# Next device call for the 256-wide latent streams (MLRA-2, GLA-2 at 2.9B; GLA-2 TP2), about
# 3 minutes: their default tiles (16/32 rows, three stages) are single-buffered in the sm_90
# TTGIR (tests/pipeline_ttgir.py), as the 128-wide ones were before 2026-12-03. Times the
# current default beside 64-row tiles at three and five stages and 32-token tiles.
# OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src:$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-out}
T="timeout 170 python benchmarks/decode/tune.py --reps 20 --splits base --no-breakdown"
$T --out "$OUT/w256-paper" --shapes mlra2_2p9b,gla2_2p9b --points 1x128K,32x16K,1x1M \
  --configs "64,4,3,1,1,32;64,4,3,1,1,64;64,4,5,1,1,64;32,4,5,1,1,64;64,8,3,1,1,64" \
  2>&1 | grep -E "us |best|\(" | grep -v "^{" | tail -40
$T --out "$OUT/w256-gla2tp2" --shapes gla2_tp2 --points 1x1M,128x16K \
  --configs "64,4,3,1,1;64,4,3,1,1,64;64,4,5,1,1,64;32,4,5,1,1,64" 2>&1 | grep -E "us " | tail -10
