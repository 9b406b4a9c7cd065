#!/usr/bin/env bash
# Prepared in the fourteenth session (2026-12-04) after no more device time was lent; the
# fifteenth (no device lent at all) added the MLP's run-time tail and split the call in two so
# each fits the 10-minute limit with room to spare (this one about 5 minutes: the three test
# groups run side by side, on a cold machine mostly compilation). The GPU tests of the four
# prepared forms (run_call4.sh and the balance README say what each is): both resident kernels (the FMA one's program choice, PDL
# entry and epilogue became shared helpers after call 2, unchanged in meaning; the
# tensor-core form never ran on a GPU), the MLP under next_left 4 and L2 units 4, the MLP's
# run-time tail and the step under it (with the L2 hint following the tail's fixed ranges,
# sixteenth session). Then, only if the resident tests pass, the tensor-core
# products' in-step A/B at 1 x 8K (MLRA-4, MLA), in a process of its own so a fault there
# cannot take other rows with it.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
# the three groups in parallel (mostly compilation on a cold machine; separate processes)
timeout 170 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider \
  tests/test_gluon_skinny_mma.py tests/test_gluon_skinny.py -rA --tb=short > "$OUT/pytest_mma.txt" 2>&1 &
P1=$!
MLRA_MLP_CONFIG='{"next_left": 4}' MLRA_MLP_L2_UNITS=4 timeout 170 env -u TRITON_INTERPRET \
  python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py tests/test_gluon_skinny.py \
  tests/test_step_kernels.py -k "mlp_kernel_matches or barrier_count or next_reads or l2_hint or run_time_tail or (fused_bf16 and (mlra_4 or mla))" \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1 &
P2=$!
MLRA_MLP_CONFIG='{"tail_steps": 2}' MLRA_MLP_L2_UNITS=4 timeout 170 env -u TRITON_INTERPRET python -m pytest \
  -p no:cacheprovider tests/test_step_kernels.py -k "fused_bf16 and (mlra_4 or mla)" -rA \
  --tb=short > "$OUT/pytest_tail.txt" 2>&1 &
P3=$!
wait $P1; MMA_RC=$?
wait $P2; RC2=$?
wait $P3; RC3=$?
for pair in "pytest_mma:resident kernels, both product forms:$MMA_RC" \
    "pytest:MLP next_left 4 + L2 units 4, the tail's kernel tests:$RC2" \
    "pytest_tail:the step under the MLP's tail + L2 units 4:$RC3"; do
  IFS=: read -r f what rc <<< "$pair"
  echo "$f ($what) rc=$rc" | tee -a "$OUT/log.txt"
  grep -cE "^PASSED" "$OUT/$f.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
  grep -E "^(FAILED|ERROR)|^E " "$OUT/$f.txt" | head -6 | tee -a "$OUT/log.txt"
done
if [ "$MMA_RC" = 0 ]; then
  C2="{\"default\": {}, \"tensor-core products\": {\"MLRA_RESIDENT_CONFIG\": {\"products\": \"mma\"}}}"
  for v in mlra_4 mla; do
    timeout 90 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
      --out "$OUT/tmp/sweep_mma_$v" --candidates "$C2" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
  done
else
  echo "tensor-core products: not timed (their GPU tests did not pass)" | tee -a "$OUT/log.txt"
fi
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
