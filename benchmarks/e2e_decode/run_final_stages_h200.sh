#!/usr/bin/env bash
# Device call C (about 6 minutes): GPU tests of the changed kernels and the overlapped
# generate; the decode step of this tree beside the session's starting commit (.baseline/,
# see side_by_side.sh) at batch 32 (batch 1 too with BEFORE_B1=1); this tree at batch 1;
# mlra generate with and without overlap.
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
RES=${RES:-/tmp/final_results}
mkdir -p "$OUT" "$RES"
source benchmarks/e2e_decode/side_by_side.sh
PYTHONPATH=$PWD/src timeout ${T_TESTS:-90} python -m pytest -q -p no:cacheprovider \
  tests/test_generate_overlap.py tests/test_step_kernels.py \
  -k "overlap or latent_prepare or tuned_on or M32" 2>&1 | tail -3
B1="--variants mlra_4,gqa,mla --contexts 8192,131072 --batches 1 --reps 30"
B32="--variants mlra_4 --contexts 16384 --batches 32 --reps 15"
run after b1 85 $B1 --modes fused --budget-s 70
[ -n "$BEFORE_B1" ] && run before b1 85 $B1 --modes fused --budget-s 70
run after b32 42 $B32 --modes fused
run before b32 42 $B32 --modes fused
for ov in on off; do
  PYTHONPATH=$PWD/src timeout 62 python benchmarks/e2e_decode/bench_generate.py \
    --variants mlra_4,gqa --overlap $ov --budget-s 45 --out "$RES/generate-$ov" 2>&1 \
    | grep -E "^\| " | tail -6
  pack
done
