#!/usr/bin/env bash
# Prepared 2026-12-03 (sixth session); ran 2026-12-04 inside ../latency/run_call1.sh at commit
# ecabd68 (results: ../latency/call1/log.txt, README.md here). The query preparation's
# one-token W_UK slices loaded into registers before the PDL wait, on top of the default W_UV
# preload, alternated three times in one call: MLA and MLRA-4 at 1 x 8K / 128K; then the GPU
# tests of the two kernels. About 4 minutes. The W_UK preload was removed after it (no
# difference), so on later commits MLRA_STEP_PRELOAD=w_uv,w_uk is refused. From the
# repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/preload/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
for r in 1 2 3; do
  for p in w_uv w_uv,w_uk; do
    MLRA_STEP_PRELOAD=$p timeout 90 python benchmarks/e2e_decode/bench_decode.py \
      --variants mla,mlra_4 --contexts 8192,131072 --batches 1 --reps 30 --compile-batches "" \
      --modes fused --out "$OUT/uk$r-${p/,/+}" 2>&1 | grep -E "ms, floor|rror" \
      | sed -E "s/, [0-9]+ tok.*//; s/^/[run $r, $p] /"
  done
done
timeout 100 python -m pytest -p no:cacheprovider tests/test_step_kernels.py tests/test_pdl.py \
  -k "prepare or preload or fused_bf16" --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -5
