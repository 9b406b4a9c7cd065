#!/usr/bin/env bash
# Prepared in the fifteenth session (2026-12-04, no device lent), the A/B half of what the
# fourteenth had as one call 3; run on call 3's warm machine (about 5 minutes). Call 2 showed
# the MLP's tail and the q/kv down's weight stream trading the same ~1.8 us: that stream needs
# bandwidth and only starts once the last MLP program has finished its main loop, while the
# main loops end over a ~4.6 us spread (the early finishers' bandwidth idles). (a) The MLP
# lets its successor launch while its programs still have 2, 4 or 8 loop steps left
# (`MlpConfig.next_left`, a predicated trigger inside the pipelined loop). (b) The output
# projection fetches the MLP's first 2 / 4 / 8 hidden units per program (gate, up and down
# rows: 4.7 / 9.5 / 19 MB for MLRA-4) into L2 once its own weights have landed (`NextReads`,
# MLRA_MLP_L2_UNITS): DRAM idles while its products run. (d) The MLP's run-time tail
# (`MlpConfig.tail_steps` / `tail_group`): programs take a rank two loop steps before the end
# of their own range; the first `tail_group` ranks stream `tail_steps` more steps of the units
# left over, the next group one fewer, each rank's share into its own row (sums in a fixed
# order): 1 step for 66 ranks; 2 for 44 + 1 for 44; the tail with (a) and with (b) (the
# sixteenth session made the L2 hint follow the tail's fixed ranges). In-step A/B at 1 x 8K (MLRA-4, MLA);
# their GPU tests ran in call 3, the traces are run_call5.sh.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/balance/run_call4.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT/tmp"
M='"MLRA_MLP_CONFIG"'
C="{\"default\": {}, \"MLP next launch 2 steps early\": {$M: {\"next_left\": 2}},
 \"4 steps early\": {$M: {\"next_left\": 4}}, \"8 steps early\": {$M: {\"next_left\": 8}},
 \"MLP first 2 units into L2\": {\"MLRA_MLP_L2_UNITS\": \"2\"},
 \"MLP first 4 units into L2\": {\"MLRA_MLP_L2_UNITS\": \"4\"},
 \"MLP first 8 units into L2\": {\"MLRA_MLP_L2_UNITS\": \"8\"},
 \"4 steps early, 4 units into L2\": {$M: {\"next_left\": 4}, \"MLRA_MLP_L2_UNITS\": \"4\"},
 \"MLP tail 1 step x 66 ranks\": {$M: {\"tail_steps\": 1}},
 \"MLP tail 2 steps x 44 + 1 x 44\": {$M: {\"tail_steps\": 2}},
 \"MLP tail 2 x 44, 4 steps early\": {$M: {\"tail_steps\": 2, \"next_left\": 4}},
 \"MLP tail 2 x 44, 4 units into L2\": {$M: {\"tail_steps\": 2}, \"MLRA_MLP_L2_UNITS\": \"4\"}}"
for v in mlra_4 mla; do
  timeout 250 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 \
    --out "$OUT/tmp/sweep_$v" --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
tar czf "$OUT/out.tgz" -C "$OUT/tmp" . && rm -rf "$OUT/tmp"
