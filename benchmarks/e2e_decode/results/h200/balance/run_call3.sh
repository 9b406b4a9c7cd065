#!/usr/bin/env bash
# Fourteenth session (2026-12-04), about 7 minutes. Call 2 showed the MLP's tail and the q/kv
# down's weight stream trading the same ~1.8 us: that stream needs bandwidth, and it only
# starts once the last MLP program has finished its main loop, while the main loops end over
# a ~4.6 us spread (the early finishers' bandwidth idles). Here the MLP lets its successor
# launch while its programs still have 2, 4 or 8 loop steps left (MLRA_MLP_NEXT_LEFT, a
# predicated trigger inside the pipelined loop; a switch of this call only); and, apart,
# the preparation kernel loading its W_UK slice into registers before its PDL wait
# (MLRA_PREP_PRELOAD=1, as W_UV does; a switch of this call only). GPU tests under both,
# in-step A/B at 1 x 8K (MLRA-4, MLA), MLRA-4 traced with the trigger 4 steps early. Also
# MLA's q/kv down at 8 rows per program (264 programs that fit beside the MLP's, as
# MLRA-4's do; MLRA_RESIDENT_QKV_BN, a switch of this call only; MLRA-4's are 8 already),
# And the output projection fetching the MLP's first 2 / 4 / 8 hidden units per program
# (gate, up and down rows: 4.7 / 9.5 / 19 MB for MLRA-4) into L2 once its own weights have
# landed (`NextReads`, MLRA_MLP_L2_UNITS): DRAM idles while its products run.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
MLRA_MLP_NEXT_LEFT=4 MLRA_PREP_PRELOAD=1 MLRA_RESIDENT_QKV_BN=8 MLRA_MLP_L2_UNITS=4 timeout 110 env -u TRITON_INTERPRET python -m pytest \
  -p no:cacheprovider tests/test_mlp_kernel.py tests/test_step_kernels.py \
  -k "mlp_kernel_matches or barrier_count or latent_prepare or (fused_bf16 and (mlra_4 or mla))" -rA --tb=short \
  > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -6 | tee -a "$OUT/log.txt"
C='{"default": {}, "MLP next launch 2 steps early": {"MLRA_MLP_NEXT_LEFT": "2"},
 "4 steps early": {"MLRA_MLP_NEXT_LEFT": "4"}, "8 steps early": {"MLRA_MLP_NEXT_LEFT": "8"},
 "W_UK preloaded": {"MLRA_PREP_PRELOAD": "1"},
 "MLP first 2 units into L2": {"MLRA_MLP_L2_UNITS": "2"},
 "MLP first 4 units into L2": {"MLRA_MLP_L2_UNITS": "4"},
 "MLP first 8 units into L2": {"MLRA_MLP_L2_UNITS": "8"},
 "q/kv down 8 rows per program": {"MLRA_RESIDENT_QKV_BN": "8"}}'
for v in mlra_4 mla; do
  timeout 200 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
echo "trace: MLRA_MLP_NEXT_LEFT=4" | tee -a "$OUT/log.txt"
MLRA_MLP_NEXT_LEFT=4 timeout 60 python benchmarks/e2e_decode/trace_step.py --variants mlra_4 \
  --contexts 8192 --out "$OUT/tmp/trace_left4" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
