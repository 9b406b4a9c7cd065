#!/usr/bin/env bash
# Prepared 2026-12-04 (eighth session), run 2026-12-04 in the ninth session (results in call7/, read in README.md):
# call 6's finding (a one-row projection's whole K in one tile: one memory latency per program
# instead of three) tried on the other one-row projections with K = 3072 inside their steps:
# GQA's norm + q/k/v (GQA 8K is 10 us per step above issue 13's 1.4x), the output projection
# and the head. Candidates are step_tune.CANDIDATES (none spills: `step_tune.py --registers`
# on the CPU, call6/registers.md). About 3 minutes. From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/merge_up/run_call7.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python benchmarks/e2e_decode/step_tune.py --variant gqa --context 8192 --rounds 5 \
  --shapes m1:k3072:n3072x768x768:plain,m1:k3072:n3072:plain,m1:k3072:n50304:plain \
  --out "$OUT/tune_gqa_8192"
timeout 120 python benchmarks/e2e_decode/step_tune.py --variant mlra_4 --context 8192 --rounds 5 \
  --shapes m1:k3072:n3072:plain,m1:k3072:n50304:plain --out "$OUT/tune_mlra_4_8192"
