#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 4 minutes. Call 1: resident projections -28 us per step
# for MLRA-4 8K, -40 for MLA 8K, but +23 for GQA, where only the output projection (18.9 MB)
# takes the kernel. Here: the same without the output projection (max_mb 16), rows per
# program 4 / 16 for the two small projections, and the traced MLRA-4 8K step (the resident
# kernel now writes the trace marks too) with and without the output projection resident.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 200 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  -x --tb=short > "$OUT/pytest_resident.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -E "^E |passed|failed|error" "$OUT/pytest_resident.txt" | tail -8 | tee -a "$OUT/log.txt"
T='"triton": {"MLRA_SKINNY_RESIDENT": "0"}, "resident": {}'
NOWO='"no wo": {"MLRA_RESIDENT_CONFIG": {"max_mb": 16}}'
BN='"no wo bn4": {"MLRA_RESIDENT_CONFIG": {"max_mb": 16, "block_n": 4}}, "no wo bn16": {"MLRA_RESIDENT_CONFIG": {"max_mb": 16, "block_n": 16}}'
for vc in mlra_4:8192 mla:8192 mlra_4:131072; do
  v=${vc%%:*}; c=${vc#*:}
  cands="{$T, $NOWO}"; [ $vc = mlra_4:8192 ] && cands="{$T, $NOWO, $BN}"
  echo "== $v $c" | tee -a "$OUT/log.txt"
  timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant $v --context $c --rounds 5 \
    --candidates "$cands" --out "$OUT/ab_${v}_$c" 2>&1 | grep -E "^\| [^c-]|rror" | tee -a "$OUT/log.txt"
done
for mode in all nowo; do
  [ $mode = nowo ] && export MLRA_RESIDENT_CONFIG='{"max_mb": 16}'
  echo "== trace $mode" | tee -a "$OUT/log.txt"
  timeout 60 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
    --out "$OUT/trace_$mode" 2>&1 | grep -E "^\||^per step|rror" | tee -a "$OUT/log.txt"
done
