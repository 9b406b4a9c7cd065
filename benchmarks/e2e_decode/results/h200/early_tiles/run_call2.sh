#!/usr/bin/env bash
# Prepared 2026-12-03, NOT YET RUN (no device time left): does MLA's step at 1 x 128K gain
# when the Gluon kernel needs less shared memory (so it can start beside the query
# preparation's programs)? The environment test of MLRA_GLUON_CONFIG on the GPU, then MLA's
# batch-1 step with the default Gluon configuration (2 x 64-row buffers, ~221 KB) and with
# 32-row tiles (two or three buffers, ~147 / ~184 KB), twice in one call.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/early_tiles/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 90 python -m pytest -p no:cacheprovider tests/test_gluon_latent.py -k environment \
  --tb=short > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?"; tail -2 "$OUT/pytest.txt"
for round in 1 2; do
  for cfg in '' '{"block_n":32,"num_buf":2}' '{"block_n":32,"num_buf":3}'; do
    MLRA_GLUON_CONFIG=$cfg timeout 60 python benchmarks/e2e_decode/bench_decode.py \
      --variants mla --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
      --modes fused --out "$OUT/r$round-$(echo "$cfg" | tr -dc 'a-z0-9_')" 2>&1 \
      | grep -E "ms, floor|rror" | sed -E "s/, [0-9]+ tok.*//; s/^/[$cfg] /"
  done
done
