#!/usr/bin/env bash
# Thirteenth session (2026-12-04), about 7 minutes. Where the one-launch MLP's 4 us after its
# last main loop go, and whether fewer programs at the barrier shorten it: (1) GPU tests of
# the MLP kernel (the last `summers` programs to arrive sum the columns: same bits as the
# default); (2) the kernel alone (bench_mlp.py --sweep-set summers); (3) in-step A/B, MLRA-4 and
# MLA at 1 x 8K; (4) the step traced, default and summers 48, each also with
# MLRA_MLP_DIAG=barrier (mark 1: counted in, mark 3: may read the partials). Outputs other
# than log.txt / pytest.txt are packed in out.tgz.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp_fixed/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
timeout 150 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
timeout 80 python benchmarks/e2e_decode/bench_mlp.py --out "$OUT/tmp/mlp" --shapes mlra_4 --sweep \
  --sweep-set summers 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
M='"MLRA_MLP_CONFIG"'
C="{\"default\": {}, \"summers 96\": {$M: {\"summers\": 96}}, \"summers 48\": {$M: {\"summers\": 48}},
 \"summers 24\": {$M: {\"summers\": 24}}}"
for v in mlra_4 mla; do
  timeout 130 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
for form in default summers48; do
  cfg=""; [ $form = summers48 ] && cfg='{"summers": 48}'
  for diag in "" barrier; do
    echo "trace: $form, MLRA_MLP_DIAG=$diag" | tee -a "$OUT/log.txt"
    MLRA_MLP_CONFIG="$cfg" MLRA_MLP_DIAG=$diag timeout 80 python benchmarks/e2e_decode/trace_step.py \
      --variants mlra_4 --contexts 8192 --dump-layer 12 --out "$OUT/tmp/trace_${form}_$diag" 2>&1 \
      | grep -E "^\| (7|6) |^\| .mlp|rror" | tee -a "$OUT/log.txt"
  done
done
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
