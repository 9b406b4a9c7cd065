#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 3 minutes. Traces of calls 3-4: the one-launch MLP starts
# only when the output projection's programs exit (its 3 stages of 48 KB and their 3 x 66 KB do
# not fit in one multiprocessor), and DRAM idles ~2 us between the output projection's last
# weights and the MLP's first bytes. In-step A/B (env_sweep.py): MLP tiles with less shared
# memory (MLRA_MLP_CONFIG num_stages 1 = loads straight into registers, 2, or 2 with half
# tiles), so its programs can start beside the output projection's.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call7.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
M='"MLRA_MLP_CONFIG"'
C="{\"default\": {}, \"stages 1\": {$M: {\"num_stages\": 1}}, \"stages 2\": {$M: {\"num_stages\": 2}},
 \"stages 2, block_h 1\": {$M: {\"num_stages\": 2, \"block_h\": 1}}}"
for v in mlra_4 mla gqa; do
  timeout 150 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
