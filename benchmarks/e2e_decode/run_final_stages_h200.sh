#!/usr/bin/env bash
# Device call C (about 8 minutes): GPU tests of the changed kernels and the overlapped
# generate; the decode step of this tree beside the session's starting commit (.baseline/,
# see run_stages_h200.sh) at batch 1 and 32; mlra generate with and without overlap.
# OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
RES=${RES:-/tmp/final_results}
mkdir -p "$OUT" "$RES"
pack() { tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null; }
PYTHONPATH=$PWD/src timeout ${T_TESTS:-110} python -m pytest -q -p no:cacheprovider \
  tests/test_generate_overlap.py tests/test_step_kernels.py \
  -k "overlap or latent_prepare or tuned_on or M32" 2>&1 | tail -3
B1="--variants mlra_4,gqa,mla --contexts 8192,131072 --batches 1 --reps 30"
B32="--variants mlra_4 --contexts 16384 --batches 32 --reps 15"
run() {  # side tag timeout args...
  local side=$1 tag=$2 t=$3; shift 3
  local root=.; [ "$side" = before ] && root=.baseline
  PYTHONPATH=$PWD/$root/src timeout "$t" python $root/benchmarks/e2e_decode/bench_decode.py \
    "$@" --out "$RES/$side-$tag" 2>&1 | grep -E "ms, floor|rror" | sed "s/^/$side /" | tail -12
  pack
}
run after b1 95 $B1 --modes fused --budget-s 80
run before b1 95 $B1 --modes fused --budget-s 80
run after b32 45 $B32 --modes fused
run before b32 45 $B32 --modes fused
for ov in on off; do
  PYTHONPATH=$PWD/src timeout 70 python benchmarks/e2e_decode/bench_generate.py \
    --variants mlra_4,gqa --overlap $ov --budget-s 55 --out "$RES/generate-$ov" 2>&1 \
    | grep -E "^\| " | tail -6
  pack
done
