#!/usr/bin/env bash
# Call 5: the seesaw schedule for 512-wide streams (mlra.kernels.gluon_seesaw): correctness
# first (hang-guarded), then its time beside the default Gluon kernel, then MLA's rows of
# issue 12's table with it as the default (MLRA_GLUON_SEESAW=1) and FlashMLA beside.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 100 python -m pytest -q -p no:cacheprovider tests/test_gluon_latent.py -k seesaw -x \
  --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"
grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | head -12
timeout 90 python benchmarks/decode/gluon_configs.py --shapes mla,mla_2p9b --lengths 128K,1M \
  --configs "0,0,0,0;0,0,0,1" 2>&1 | grep -E "^\||rror" | tee "$OUT/seesaw_configs.md"
MLRA_GLUON_SEESAW=1 timeout 100 python -m mlra bench decode --variants mla \
  --lengths 128K,512K,1M,2M --batches 128 --batch-lengths 16K --reps 50 --out "$OUT/decode_mla" \
  2>&1 | grep -E "^\||^- |rror" | tail -14
