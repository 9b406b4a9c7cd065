#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 8 minutes: the one-row projections with their weights
# resident in shared memory (src/mlra/kernels/gluon_skinny.py: every program TMA-loads its
# whole rows before its PDL wait, no split-K). GPU tests of the kernel, then inside the
# batch-1 steps (env_sweep.py, interleaved rounds) the Triton projection kernel
# (MLRA_SKINNY_RESIDENT=0) against the resident one.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 200 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  -x --tb=short > "$OUT/pytest_resident.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -E "^E |passed|failed|error" "$OUT/pytest_resident.txt" | tail -8 | tee -a "$OUT/log.txt"
CANDS='{"triton": {"MLRA_SKINNY_RESIDENT": "0"}, "resident": {"MLRA_SKINNY_RESIDENT": "1"}}'
for vc in mlra_4:8192 mla:8192 gqa:8192 mlra_4:131072; do
  v=${vc%%:*}; c=${vc#*:}
  echo "== $v $c" | tee -a "$OUT/log.txt"
  timeout 85 python benchmarks/e2e_decode/env_sweep.py --variant $v --context $c --rounds 5 \
    --candidates "$CANDS" --out "$OUT/ab_${v}_$c" 2>&1 | grep -E "^\| [^c-]|rror" | tee -a "$OUT/log.txt"
done
