#!/usr/bin/env bash
# Eleventh session (2026-12-04), about 4 minutes. Call 5: the weights have landed 0.1 us
# after the release, yet the programs end 2-3 us later: with four warps per program (one per
# scheduler) the ~900 instructions per thread after the wait run latency-bound. Here: 4 / 8 /
# 16 warps per program (ResidentConfig.num_warps; 16 leaves ~310 instructions per thread),
# GPU tests, in-step A/B against the Triton kernel, MLRA-4 8K per-program marks at 16.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/resident/run_call6.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 200 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_gluon_skinny.py \
  --tb=short > "$OUT/pytest_resident.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -E "^E |passed|failed|error" "$OUT/pytest_resident.txt" | tail -8 | tee -a "$OUT/log.txt"
C='{"triton": {"MLRA_SKINNY_RESIDENT": "0"}, "warps 4": {}, "warps 8": {"MLRA_RESIDENT_CONFIG": {"num_warps": 8}},
    "warps 16": {"MLRA_RESIDENT_CONFIG": {"num_warps": 16}}}'
for vc in mlra_4:8192 mla:8192; do
  v=${vc%%:*}; c=${vc#*:}
  echo "== $v $c" | tee -a "$OUT/log.txt"
  timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant $v --context $c --rounds 5 \
    --candidates "$C" --out "$OUT/ab_${v}_$c" 2>&1 | grep -E "^\| [^c-]|rror" | tee -a "$OUT/log.txt"
done
MLRA_RESIDENT_CONFIG='{"num_warps": 16}' timeout 80 python benchmarks/e2e_decode/trace_step.py \
  --variants mlra_4 --contexts 8192 --dump-layer 12 --out "$OUT/trace_dump" 2>&1 \
  | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
