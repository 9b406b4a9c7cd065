#!/usr/bin/env bash
# Call 4: GPU tests of the decode kernels and the benchmark; issue 12's table with the clean
# (read) L2 flush, now the default, every latent shape with FlashMLA beside; the 128K and 1M
# points again with the zeroing flush (the method of the earlier tables); MLA / MLRA-4
# batch-1 steps before (9b9221a) / after (the one-pass merge sits in every step).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  tests/test_gluon_latent.py tests/test_tpa_kernel.py tests/test_kernels_bench.py --tb=short \
  > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -8
timeout 170 python -m mlra bench decode --variants mla,gla2_tp2,mlra4_tp4,mlra2_tp2,mlra4_fused,gqa_tp8 \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 50 --out "$OUT/decode" \
  2>&1 | grep -E "^\||^- |rror" | tail -24
timeout 80 python -m mlra bench decode --variants mla,mlra4_tp4,gqa_tp8 --lengths 128K,1M \
  --batch-lengths "" --reps 50 --flush write --out "$OUT/decode_write" 2>&1 \
  | grep -E "^\||rror" | tail -6
RES=$OUT/steps; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
run before b1 100 --variants mla,mlra_4 --contexts 8192,131072 --batches 1 --reps 30 --modes fused
run after b1 100 --variants mla,mlra_4 --contexts 8192,131072 --batches 1 --reps 30 --modes fused
