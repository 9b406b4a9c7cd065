#!/usr/bin/env bash
# Thirteenth session (2026-12-04), about 6 minutes. The one-launch MLP's barrier as a count
# that only grows (each launch adds its programs; one atomic per program, polls with acquire
# loads, no reset round before exit) and the residual's slice loaded before the barrier
# (call 2's SASS: it was loaded after the partial sums, one more L2 round trip).
# (1) GPU tests; (2) in-step A/B, interleaved rounds: new (default), MLRA_MLP_AB=1 (the previous
# barrier, residual early), MLRA_MLP_AB=2 (the previous tree's code); MLRA-4, MLA, GQA at 1 x 8K;
# (3) MLRA-4 traced, new form, with and without MLRA_MLP_DIAG=barrier.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp_fixed/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
timeout 170 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py \
  tests/test_pdl.py tests/test_kernel_trace.py -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
C='{"growing count, residual early (new)": {}, "reset barrier, residual early": {"MLRA_MLP_AB": "1"},
 "reset barrier, residual late (previous)": {"MLRA_MLP_AB": "2"}}'
for v in mlra_4 mla gqa; do
  timeout 110 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 4 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
for diag in "" barrier; do
  echo "trace: MLRA_MLP_DIAG=$diag" | tee -a "$OUT/log.txt"
  MLRA_MLP_DIAG=$diag timeout 80 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
    --contexts 8192 --dump-layer 12 --out "$OUT/tmp/trace_$diag" 2>&1 \
    | grep -E "^\| (7|6) |^\| .mlp|rror" | tee -a "$OUT/log.txt"
done
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
