#!/usr/bin/env bash
# One device call (about 5 minutes): the latent decode kernel's pipeline depth. Triton 3.6
# single-buffers the cache tiles of a loop whose tile address comes from the block table unless
# num_stages is high enough (sm_90 TTGIR: 1 buffer at stages 3-4 with mma.sync tiles, 2 at 5);
# this times the current defaults beside deeper pipelines and 64-row (wgmma) tiles, for the
# paper-size shapes of the end-to-end step and the 64-head shapes of issue 12.
# OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src:$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-out}
T="timeout 170 python benchmarks/decode/tune.py --reps 20 --splits base --no-breakdown"
$T --out "$OUT/paper-mlra4" --shapes mlra4_2p9b --points 1x128K,32x16K,1x1M \
  --configs "64,4,3,1,1,32;64,4,5,1,1,32;64,4,6,1,1,32;128,4,5,1,1,32;64,4,5,0,1,32;64,4,3,1,1,64;64,4,5,1,1,64;128,4,4,1,1,64;64,8,5,1,1,64;64,8,5,1,2,32" \
  2>&1 | grep -E "us |best|\(" | grep -v "^{" | tail -45
$T --out "$OUT/paper-mla" --shapes mla_2p9b --points 1x128K,32x16K \
  --configs "64,8,2,1,1,32;32,8,5,1,1,32;64,8,5,1,1,32;32,4,5,1,1,32;32,8,5,1,1,64;64,8,3,1,1,64" \
  2>&1 | grep -E "us |best|\(" | grep -v "^{" | tail -20
$T --out "$OUT/issue12-mla" --shapes mla --points 1x1M,128x16K \
  --configs "64,8,2,1,1;32,8,4,1,1;32,8,5,1,1" 2>&1 | grep -E "us " | tail -8
$T --out "$OUT/issue12-mlra" --shapes mlra4_fused,mlra4_tp4 --points 1x1M,128x16K,1x128K \
  --configs "64,4,3,1,1;64,4,4,1,1;64,4,5,1,1;128,4,5,1,1" 2>&1 | grep -E "us " | tail -26
