#!/usr/bin/env bash
# One device call (about 8 minutes), 2026-12-03 session 4: why the paper-size attention takes
# 10-14 us at batch 1 x 8K (9.6 MB, 2.3 us of bytes): the call split (kernel, merge, gaps) and
# split counts at 8K and 128K; ncu of one launch of each kernel at 8K. Then issue 18's
# training probe with the split-consumer forms (benchmarks/train/run_probe_split_h200.sh).
# From the repository root: OUT=dir bash benchmarks/decode/results/h200/short/run_call3.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 70 python benchmarks/decode/fixed_cost.py \
  --points mlra4_2p9b:8K,mla_2p9b:8K,mla_2p9b:128K,mlra4_2p9b:128K --splits 0.25,0.5,0.75,1.5 \
  --reps 30 --out "$OUT/fixed_cost" 2>&1 | grep -v Warn | tail -14
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,launch__grid_size,launch__registers_per_thread,launch__occupancy_limit_shared_mem,sm__cycles_active.avg,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__cycles_active.avg,smsp__inst_executed.sum
for p in "mlra4_2p9b 8K _latent_decode_kernel" "mla_2p9b 8K _gluon_latent_kernel" "mlra4_2p9b 8K _merge_kernel"; do
  set -- $p
  timeout 60 ncu --metrics $M -k regex:$3 --launch-skip 2 --launch-count 1 \
    python benchmarks/decode/ncu_decode.py $1 $2 > "$OUT/ncu_$1_$2$3.txt" 2>&1
  echo "== $p"; grep -E "^\s+(gpu__|dram__|lts__|sm__|launch__|smsp__)" "$OUT/ncu_$1_$2$3.txt" \
    | awk '{print $1, $(NF)}'
done
OUT=$OUT/train_probe bash benchmarks/train/run_probe_split_h200.sh
