#!/usr/bin/env bash
# Prepared 2026-12-04 (ninth session), NOT YET RUN (the session's device time was spent),
# about 4 minutes: (1) the GPU tests the MLA q-up entry has not had (the projection at its
# shape, a tile wider than K, the fused bf16 steps); (2) MLA's own norm + q/kv down
# (`m1:k3072:n1536x576`: it runs MLRA-4's entry, the nearest) and GQA's q/k/v with two stages
# (its entry loads three 1024-wide tiles one after another), candidates inside their steps
# (registers and spills of every candidate: `step_tune.py --registers`, CPU, all clean).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mla_q_up/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python -m pytest -p no:cacheprovider tests/test_step_kernels.py \
  -k "skinny_linear_matches or wider or fused_bf16" --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
timeout 90 python benchmarks/e2e_decode/step_tune.py --variant mla --context 8192 --rounds 5 \
  --shapes m1:k3072:n1536x576:plain --out "$OUT/tune_mla_8192" 2>&1 | grep -E "^\|" | tee "$OUT/log.txt"
timeout 90 python benchmarks/e2e_decode/step_tune.py --variant gqa --context 8192 --rounds 5 \
  --shapes m1:k3072:n3072x768x768:plain --out "$OUT/tune_gqa_8192" 2>&1 | grep -E "^\|" | tee -a "$OUT/log.txt"
