#!/usr/bin/env bash
# 2026-12-04 (eighth session), sixth call (about 3 minutes): the two small one-row projections
# (norm + q/kv down, query norm + q up) tuned inside the MLRA-4 8K step (step_tune.py's new
# candidates: whole-K tiles, split-K with one tile per program, 8 warps, pipelined tiles); their
# tuned entries came from bench_skinny alone, and the latency call-1 ncu found the q/kv down
# projection's three tile loads per program waiting one memory latency after another.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call6.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 230 python benchmarks/e2e_decode/step_tune.py --variant mlra_4 --context 8192 \
  --shapes m1:k3072:n1024x576:plain,m1:k1024:n4608:plain --rounds 3 --reps 30 --out "$OUT/tune"
