#!/usr/bin/env bash
# Prepared in the fourteenth session (2026-12-04) after no more device time was lent; the
# fifteenth (no device lent at all) added (d) and ran the tensor-core form's A/B in its own
# process, after its GPU tests and only if they pass, so a fault there cannot take the other
# rows with it. About 8 minutes. Call 2 showed the MLP's tail and the q/kv down's weight
# stream trading the same ~1.8 us: that stream needs bandwidth and only starts once the last
# MLP program has finished its main loop, while the main loops end over a ~4.6 us spread (the
# early finishers' bandwidth idles). (a) The MLP lets its successor launch while its programs
# still have 2, 4 or 8 loop steps left (`MlpConfig.next_left`, a predicated trigger inside the
# pipelined loop). (b) The output projection fetches the MLP's first 2 / 4 / 8 hidden units
# per program (gate, up and down rows: 4.7 / 9.5 / 19 MB for MLRA-4) into L2 once its own
# weights have landed (`NextReads`, MLRA_MLP_L2_UNITS): DRAM idles while its products run.
# (c) The resident projections' products on the tensor cores (`ResidentConfig(products="mma")`,
# `mlra.kernels.gluon_skinny_mma`: 1.4-2.3x fewer instructions after the wait, resident_sass.md).
# (d) The MLP's run-time tail (`MlpConfig.tail_steps` / `tail_group`): programs take a rank two
# loop steps before the end of their own range; the first `tail_group` ranks stream
# `tail_steps` more steps of the units left over, the next group one fewer, each rank's share
# into its own row (sums in a fixed order). 1 step for 66 ranks, 2 for 44 + 1 for 44.
# GPU tests of all four first (both resident kernels: the FMA one's program choice, PDL
# entry and epilogue became shared helpers after call 2, unchanged in meaning), in-step A/B at
# 1 x 8K (MLRA-4, MLA); the traces are run_call4.sh.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
timeout 150 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider \
  tests/test_gluon_skinny_mma.py tests/test_gluon_skinny.py -rA --tb=short > "$OUT/pytest_mma.txt" 2>&1
MMA_RC=$?
echo "pytest (resident kernels, both product forms) rc=$MMA_RC" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest_mma.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest_mma.txt" | head -6 | tee -a "$OUT/log.txt"
MLRA_MLP_CONFIG='{"next_left": 4}' MLRA_MLP_L2_UNITS=4 timeout 150 env -u TRITON_INTERPRET \
  python -m pytest -p no:cacheprovider tests/test_mlp_kernel.py tests/test_gluon_skinny.py \
  tests/test_step_kernels.py -k "mlp_kernel_matches or barrier_count or next_reads or run_time_tail or (fused_bf16 and (mlra_4 or mla))" \
  -rA --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -6 | tee -a "$OUT/log.txt"
MLRA_MLP_CONFIG='{"tail_steps": 2}' timeout 100 env -u TRITON_INTERPRET python -m pytest \
  -p no:cacheprovider tests/test_step_kernels.py -k "fused_bf16 and (mlra_4 or mla)" -rA \
  --tb=short > "$OUT/pytest_tail.txt" 2>&1
echo "pytest (step under the MLP's tail) rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest_tail.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest_tail.txt" | head -6 | tee -a "$OUT/log.txt"
M='"MLRA_MLP_CONFIG"'
C="{\"default\": {}, \"MLP next launch 2 steps early\": {$M: {\"next_left\": 2}},
 \"4 steps early\": {$M: {\"next_left\": 4}}, \"8 steps early\": {$M: {\"next_left\": 8}},
 \"MLP first 2 units into L2\": {\"MLRA_MLP_L2_UNITS\": \"2\"},
 \"MLP first 4 units into L2\": {\"MLRA_MLP_L2_UNITS\": \"4\"},
 \"MLP first 8 units into L2\": {\"MLRA_MLP_L2_UNITS\": \"8\"},
 \"4 steps early, 4 units into L2\": {$M: {\"next_left\": 4}, \"MLRA_MLP_L2_UNITS\": \"4\"},
 \"MLP tail 1 step x 66 ranks\": {$M: {\"tail_steps\": 1}},
 \"MLP tail 2 steps x 44 + 1 x 44\": {$M: {\"tail_steps\": 2}},
 \"MLP tail 2 x 44, 4 steps early\": {$M: {\"tail_steps\": 2, \"next_left\": 4}}}"
for v in mlra_4 mla; do
  timeout 240 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
if [ "$MMA_RC" = 0 ]; then
  C2="{\"default\": {}, \"tensor-core products\": {\"MLRA_RESIDENT_CONFIG\": {\"products\": \"mma\"}}}"
  for v in mlra_4 mla; do
    timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
      --out "$OUT/tmp/sweep_mma_$v" --candidates "$C2" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
  done
else
  echo "tensor-core products: not timed (their GPU tests did not pass)" | tee -a "$OUT/log.txt"
fi
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
