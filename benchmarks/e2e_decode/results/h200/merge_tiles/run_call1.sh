#!/usr/bin/env bash
# Tenth session (2026-12-04), about 6 minutes: why MLRA-4's split merge holds 4.0 us of work
# per layer at 1 x 8K when GQA's holds 1.6 (results/h200/trace_ninth), and whether other
# merge tiles or split counts shorten the step. (1) ncu on the merge kernel in its place in the
# eager fused step (its partials just written by the attention; L2 not flushed), MLRA-4 and
# GQA; (2) env_sweep.py: the batch-1 step under merge tiles / warps (MLRA_MERGE_CONFIG) and
# latent split counts (MLRA_LATENT_CONFIG), 3 interleaved rounds, MLRA-4, MLA and GQA at 8K.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/merge_tiles/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
M=gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,lts__t_bytes.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__registers_per_thread,launch__occupancy_limit_registers,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__inst_executed.sum,smsp__cycles_active.avg,sm__cycles_elapsed.max
for v in mlra_4 gqa; do
  timeout 150 ncu --metrics $M -k regex:_merge_kernel --cache-control none --launch-skip 48 \
    --launch-count 2 python benchmarks/e2e_decode/ncu_step.py --variant $v > "$OUT/ncu_merge_$v.txt" 2>&1
  echo "== ncu merge $v (rc $?)" | tee -a "$OUT/log.txt"
  grep -E "^\s+(gpu__|dram__|lts__|sm__|launch__|smsp__)" "$OUT/ncu_merge_$v.txt" \
    | awk '{print $1, $(NF-1), $NF}' | head -26 | tee -a "$OUT/log.txt"
done
D='"MLRA_MERGE_CONFIG"'
MERGE="{\"default\": {}, \"d32\": {$D: {\"block_d\": 32}}, \"d16\": {$D: {\"block_d\": 16}},
 \"d16 w2\": {$D: {\"block_d\": 16, \"num_warps\": 2}}, \"d32 w2\": {$D: {\"block_d\": 32, \"num_warps\": 2}},
 \"d64 w8\": {$D: {\"block_d\": 64, \"num_warps\": 8}}, \"d128 w8\": {$D: {\"block_d\": 128, \"num_warps\": 8}}"
L='"MLRA_LATENT_CONFIG"'
timeout 170 python benchmarks/e2e_decode/env_sweep.py --variant mlra_4 --rounds 3 --out "$OUT/mlra_4" \
  --candidates "$MERGE, \"splits 44\": {$L: {\"num_splits\": 44}}, \"splits 55\": {$L: {\"num_splits\": 55}},
  \"splits 44 d32\": {$L: {\"num_splits\": 44}, $D: {\"block_d\": 32}}}" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
for v in mla gqa; do
  timeout 120 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/$v" \
    --candidates "$MERGE}" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
