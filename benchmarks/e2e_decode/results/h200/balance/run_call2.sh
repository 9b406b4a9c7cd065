#!/usr/bin/env bash
# Fourteenth session (2026-12-04), about 5 minutes. Call 1's trace: MLRA-4's one-launch MLP
# spends 4.09 us per layer after its last main loop, MLA's 2.32. MLRA-4's next launch (the
# q/kv down, 200 resident programs of 48 KB) fits beside the MLP and starts once every MLP
# program has finished its main loop, putting 9.8 MB of TMA loads in flight during the MLP's
# barrier and column sums; MLA's (132 programs of 98 KB) does not fit and waits. Here the MLP
# lets its successor launch after its main loop (default), after its barrier, or at its end
# (MLRA_MLP_NEXT_AT 0 / 1 / 2, a switch of this call only): GPU tests of the MLP kernel under
# 1 and 2, in-step A/B at 1 x 8K (MLRA-4, MLA), MLRA-4 traced under 1 and 2.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
for at in 1 2; do
  MLRA_MLP_NEXT_AT=$at timeout 120 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider \
    tests/test_mlp_kernel.py tests/test_pdl.py -rA --tb=short > "$OUT/pytest_$at.txt" 2>&1
  echo "MLRA_MLP_NEXT_AT=$at pytest rc=$?" | tee -a "$OUT/log.txt"
  grep -cE "^PASSED" "$OUT/pytest_$at.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
  grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest_$at.txt" | head -6 | tee -a "$OUT/log.txt"
done
C='{"default (after the main loop)": {}, "after the barrier": {"MLRA_MLP_NEXT_AT": "1"},
 "at the end": {"MLRA_MLP_NEXT_AT": "2"}}'
for v in mlra_4 mla; do
  timeout 130 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 4 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
for at in 1 2; do
  echo "trace: MLRA_MLP_NEXT_AT=$at" | tee -a "$OUT/log.txt"
  MLRA_MLP_NEXT_AT=$at timeout 60 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
    --contexts 8192 --out "$OUT/tmp/trace_$at" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
