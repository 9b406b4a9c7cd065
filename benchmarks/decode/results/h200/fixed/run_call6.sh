#!/usr/bin/env bash
# Call 6: the seesaw schedule as the default for long splits of 512-wide streams
# (SEESAW_MIN_TOKENS): GPU tests of the Gluon and Triton latent kernels, then issue 12's
# table (clean L2 flush, FlashMLA beside, every latent shape).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py \
  tests/test_kernels.py --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | head -8; tail -2 "$OUT/pytest.txt"
timeout 170 python -m mlra bench decode --variants mla,gla2_tp2,mlra4_tp4,mlra2_tp2,mlra4_fused,gqa_tp8 \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 50 --out "$OUT/decode" \
  2>&1 | grep -E "^\||^- |rror" | tail -32
