#!/usr/bin/env bash
# One device call (about 5 minutes): which kernels hold a batch-1 step's critical path
# (profile_step.py's "exposed" column: start to next start, with PDL overlap), and the one-row
# projections with explicit split-K factors (bench_skinny.py --sweep-set split).
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for vc in mlra_4:8192 mla:8192 mlra_4:131072; do
  v=${vc%%:*}; c=${vc##*:}
  timeout 75 python benchmarks/e2e_decode/profile_step.py --variant "$v" --context "$c" \
    --modes fused --top 9 --reps 10 --out "$OUT/profile-$v-$c" 2>&1 | grep -E "^## |^\| " | head -13
done
timeout 200 python benchmarks/e2e_decode/bench_skinny.py --rows 1 --sweep --sweep-rows 1 \
  --sweep-set split --quick --out "$OUT/skinny-split" 2>&1 | grep -E "^\| |^[0-9]+ s" | tail -10
