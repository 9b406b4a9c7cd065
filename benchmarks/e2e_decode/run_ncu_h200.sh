#!/usr/bin/env bash
# One device call (about 3 minutes): ncu on the one-row down and gate/up projections (why
# down reaches 63% of copy bandwidth and gate/up 86%). OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}
mkdir -p "$OUT"
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,launch__grid_size,launch__registers_per_thread,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__throughput.avg.pct_of_peak_sustained_elapsed
timeout 200 ncu --metrics $M -k regex:_skinny_kernel --launch-skip 3 --launch-count 1 \
  python benchmarks/e2e_decode/ncu_skinny.py "down + residual (mlra_4)" > "$OUT/ncu_down.txt" 2>&1
timeout 120 ncu --metrics $M -k regex:_skinny_kernel --launch-skip 3 --launch-count 1 \
  python benchmarks/e2e_decode/ncu_skinny.py "gate/up swiglu (mlra_4)" > "$OUT/ncu_gateup.txt" 2>&1
for f in ncu_down ncu_gateup; do echo "== $f"; grep -E "^\s+(gpu__|dram__|lts__|sm__|launch__|smsp__)" "$OUT/$f.txt" | awk '{print $1, $(NF)}'; done
# (its split-count part printed nothing: tune.py had no default configurations for the
# paper shapes and failed without a clear message; it now says so, and the split count ran in
# run_step_tune_h200.sh)
# batch 1, the session's starting commit (.baseline) beside this tree (direct-load tuned
# entries for the small one-row projections)
RES=$OUT/b1; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
for side in before after; do
  run $side b1 150 --variants mlra_4,mla,gqa --contexts 8192 --batches 1 --reps 30 --modes fused
done
