#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 4 minutes. Call 3's per-program marks: the q/kv down
# programs start 4 us before their wait yet finish 1.8-3.8 us after it, as if their 4 KB TMA
# boxes ([8 rows, 256 inputs]) streamed slowly. Now a box covers up to 4 chunks of 256
# inputs of every row (3-D view of the weight, 16 KB for 8 rows, ResidentConfig.box_chunks):
# GPU tests, then in-step A/B of box sizes 1 / 2 / 4 against the Triton kernel, and the
# MLRA-4 8K per-program marks with the default (4).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 200 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  --tb=short > "$OUT/pytest_resident.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -E "^E |passed|failed|error" "$OUT/pytest_resident.txt" | tail -8 | tee -a "$OUT/log.txt"
C='{"triton": {"MLRA_SKINNY_RESIDENT": "0"}, "box 1": {"MLRA_RESIDENT_CONFIG": {"box_chunks": 1}},
    "box 2": {"MLRA_RESIDENT_CONFIG": {"box_chunks": 2}}, "box 4": {}}'
for vc in mlra_4:8192 mla:8192; do
  v=${vc%%:*}; c=${vc#*:}
  echo "== $v $c" | tee -a "$OUT/log.txt"
  timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant $v --context $c --rounds 5 \
    --candidates "$C" --out "$OUT/ab_${v}_$c" 2>&1 | grep -E "^\| [^c-]|rror" | tee -a "$OUT/log.txt"
done
timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 --contexts 8192 \
  --dump-layer 12 --out "$OUT/trace_dump" 2>&1 | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
