#!/usr/bin/env bash
# Run 2026-12-03 (sixth session) at a92ee22, results in README.md / call1/. The skinny knobs it
# sets (MLRA_SKINNY_PRELOAD, MLRA_SKINNY_EARLY_LAUNCH) were removed afterwards (measured
# slower); at a later commit they are ignored. MLRA_STEP_PRELOAD is now on unless set to 0.
# one-row projections that load their first K tiles into registers before the PDL wait
# (SkinnyConfig.preload, MLRA_SKINNY_PRELOAD for every one-row launch without a tuned value).
# GPU tests, then batch-1 steps of MLRA-4 / MLA / GQA at 8K and 128K with 0 (today's code
# path), 2 and 4 preloaded tiles, each with and without the next kernel launched right after
# the wait (MLRA_SKINNY_EARLY_LAUNCH), and the W_UV launch's slice preloaded too
# (MLRA_STEP_PRELOAD), in one call; then the per-launch profile of MLRA-4 at 8K with 4.
# About 8 minutes. From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/preload/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 150 python -m pytest -p no:cacheprovider tests/test_step_kernels.py tests/test_pdl.py \
  -k "skinny or preload or fused_bf16 or prepare_and_up or w_uv" --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -6
# skinny preload : skinny early launch : W_UV preload (MLRA_STEP_PRELOAD); baseline repeated
k=0
for v in 0:0:0 2:0:0 4:0:0 4:1:0 4:0:1 0:0:1 0:1:0 0:0:0 4:0:0; do
  IFS=: read -r n e u <<< "$v"; k=$((k + 1))
  MLRA_SKINNY_PRELOAD=$n MLRA_SKINNY_EARLY_LAUNCH=$e MLRA_STEP_PRELOAD=$u timeout 100 python \
    benchmarks/e2e_decode/bench_decode.py --variants mlra_4,mla,gqa --contexts 8192,131072 \
    --batches 1 --reps 30 --compile-batches "" --modes fused --out "$OUT/steps$k-$n-$e-$u" \
    2>&1 | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$v] /"
done
MLRA_SKINNY_PRELOAD=4 timeout 90 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 \
  --context 8192 --modes fused --reps 20 --top 10 --out "$OUT/profile-preload4" 2>&1 \
  | grep -E "^## |^\| \`" | head -24
