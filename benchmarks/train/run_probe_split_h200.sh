#!/usr/bin/env bash
# GPU call for issue 18 (run 2026-12-03; results in results/h200/gluon_probe/split): the training probe's BENCH
# configurations, the four split-consumer forms among them, checked and timed beside the
# Triton forward. From the repository root: OUT=dir bash benchmarks/train/run_probe_split_h200.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 python benchmarks/train/gluon_attn_probe.py --check > "$OUT/probe_check.txt" 2>&1
echo "check rc=$?"; grep -c PASS "$OUT/probe_check.txt"; grep -E "FAIL|rror" "$OUT/probe_check.txt" | head
timeout 170 python benchmarks/train/gluon_attn_probe.py --bench > "$OUT/probe_bench.txt" 2>&1
echo "bench rc=$?"; grep -E "^bench" "$OUT/probe_bench.txt"
