#!/usr/bin/env bash
# Call 3: the split partials and the merge, before / after in one run. `before` is the start
# commit of the session (9b9221a, in .baseline/src); `merge` the one-pass merge with fp32
# partials (MLRA_SPLIT_PARTIALS=fp32); `after` the one-pass merge with bf16 partials. Then
# MLA's Gluon tile shapes at 1M (32-row tiles with 3-4 buffers) and GPU kernel tests.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
P="mla:128K,mla:1M,mlra4_tp4:128K,mlra4_tp4:1M,gqa_tp8:1M,mlra2_tp2:1M"
PYTHONPATH=$PWD/.baseline/src timeout 100 python benchmarks/decode/fixed_cost.py --points $P \
  --splits "" --out "$OUT/before" 2>&1 | grep -v "^    \|Warn\|warn" | tee "$OUT/before.txt"
MLRA_SPLIT_PARTIALS=fp32 PYTHONPATH=$PWD/src timeout 100 python benchmarks/decode/fixed_cost.py \
  --points $P --splits "" --out "$OUT/merge" 2>&1 | grep -v "^    \|Warn\|warn" | tee "$OUT/merge.txt"
PYTHONPATH=$PWD/src timeout 100 python benchmarks/decode/fixed_cost.py --points $P \
  --splits "" --out "$OUT/after" 2>&1 | grep -v "^    \|Warn\|warn" | tee "$OUT/after.txt"
PYTHONPATH=$PWD/src timeout 80 python benchmarks/decode/gluon_configs.py --shapes mla \
  --lengths 1M --configs "0,0,0;32,3,2;32,4,2" 2>&1 | grep -E "^\||rror" | tee "$OUT/mla_configs.md"
PYTHONPATH=$PWD/src timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  tests/test_gluon_latent.py tests/test_tpa_kernel.py --tb=short 2>&1 | grep -E "^E |passed|failed" | tail -15
