#!/usr/bin/env bash
# Next device call for issue 12 (about 4 minutes, carry .carry for FlashMLA): the MLA kernel
# with its 64 x 512 accumulator split over two programs (value_split=2: each accumulates 256
# columns, both compute the full scores; ptxas on the CPU: the default 8-warp, 2-stage
# configuration spills 412 bytes, value split at 8 warps / 3 stages 220) beside the default,
# FlashMLA in the same run; then the 256-wide streams (run_w256_h200.sh).
# OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src:$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-out}
timeout 240 python benchmarks/decode/tune.py --reps 20 --splits three --no-breakdown \
  --out "$OUT/mla-vs" --shapes mla,mla_2p9b --points 1x128K,1x1M,128x16K \
  --configs "64,8,2,1,1,0,1;64,8,3,1,1,0,2;64,4,3,1,1,0,2;32,4,4,1,1,0,2;32,8,4,1,1,0,2" \
  2>&1 | grep -E "us |best|FLASH|\(" | grep -v "^{" | tail -40
