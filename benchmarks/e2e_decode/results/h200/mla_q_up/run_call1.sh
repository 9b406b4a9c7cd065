#!/usr/bin/env bash
# 2026-12-04 (ninth session), about 2 minutes: MLA's query up-projection (q rank 1536 ->
# 24 x 192) has no tuned entry (the table's shapes are MLRA-4's, looked up only with the same
# K), so it runs the generic default (32 x 256 tiles, split K, 3 stages). Candidates inside
# MLA's 1 x 8K step, including whole-K tiles as the kept q/kv down and output entries.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mla_q_up/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python benchmarks/e2e_decode/step_tune.py --variant mla --context 8192 --rounds 5 \
  --shapes m1:k1536:n4608:plain --out "$OUT/tune_mla_8192" 2>&1 | grep -E "^\|" | tee "$OUT/log.txt"
