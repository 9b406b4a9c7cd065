#!/usr/bin/env bash
# First device call of 2026-12-03 (third session; about 6 minutes): GPU tests of the decode
# kernels after last session's CPU-only changes; where the fixed cost of a decode call goes
# (benchmarks/decode/fixed_cost.py: L2 flush modes, profiler split, split counts); the first
# GPU run of the Gluon training-attention probe (issue 18; hang-guarded by timeouts).
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/fixed/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
timeout 170 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py \
  tests/test_kernels.py --tb=line 2>&1 | grep -vE "^\s*$|warnings" | tail -6
timeout 150 python benchmarks/decode/fixed_cost.py --out "$OUT" 2>&1 | tee "$OUT/fixed_cost.txt"
timeout 90 python benchmarks/train/gluon_attn_probe.py --check 2>&1 | tail -15 \
  | tee "$OUT/probe_check.txt"
timeout 90 python benchmarks/train/gluon_attn_probe.py --bench 2>&1 | tail -15 \
  | tee "$OUT/probe_bench.txt"
