#!/usr/bin/env bash
# 2026-12-03 (fifth session), device call 2: the output projection inside the one-launch MLP
# kernel (kernels.projection_mlp; MLRA_MLP_PROJECTION=0 keeps it a launch of its own).
# GPU tests, then batch-1 steps of MLRA-4 / MLA / GQA at 8K and 128K: before (.baseline =
# ebbc378, the session's start), after, after with the switch off; a profile of MLRA-4 at 8K.
# From the repository root, .baseline carried:
# OUT=dir bash benchmarks/e2e_decode/results/h200/oproj_in_mlp/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 240 python -m pytest -p no:cacheprovider tests/test_projection_mlp.py \
  tests/test_mlp_kernel.py tests/test_pdl.py tests/test_step_kernels.py --tb=short \
  > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -8
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
ARGS="--variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 --modes fused"
run before b1 150 $ARGS
run after b1 150 $ARGS
MLRA_MLP_PROJECTION=0 run after b1-switch-off 150 $ARGS
timeout 100 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --context 8192 \
  --modes fused --reps 20 --top 10 --out "$OUT/profile-mlra_4-8192" 2>&1 \
  | grep -E "^## |^\| \`" | head -24
