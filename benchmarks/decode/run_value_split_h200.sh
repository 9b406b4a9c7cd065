#!/usr/bin/env bash
# Next device call for issue 12 (about 4 minutes, carry .carry for FlashMLA): the MLA kernel
# with its 64 x 512 accumulator split over two programs (value_split=2: each accumulates 256
# columns, both compute the full scores) beside the default, FlashMLA in the same run.
# ptxas on the CPU (sm_90 build, MLA, 64 rows, 8 warps): the default (64-token tiles, 2
# stages) spills 412 bytes per thread, 32-token tiles 208; value split with 32-token tiles 16
# (3 or 4 stages), with 16-token tiles none (241 registers, 108 KB: two programs per SM).
# OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src:$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-out}
timeout 240 python benchmarks/decode/tune.py --reps 20 --splits three --no-breakdown \
  --out "$OUT/mla-vs" --shapes mla,mla_2p9b --points 1x128K,1x1M,128x16K \
  --configs "64,8,2,1,1,0,1;32,8,2,1,1,0,1;32,8,3,1,1,0,2;32,8,4,1,1,0,2;16,8,4,1,1,0,2" \
  2>&1 | grep -E "us |best|FLASH|\(" | grep -v "^{" | tail -40
