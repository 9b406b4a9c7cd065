#!/usr/bin/env bash
# 2026-12-04, first call of the session (about 8 minutes). From the repository root:
# OUT=dir bash benchmarks/e2e_decode/results/h200/latency/run_call1.sh
# 1. the compiled loss's GPU tests (their CUDA case had not run on a GPU);
# 2. the prepared W_UK preload A/B (../preload/run_call3.sh);
# 3. is a one-row projection's time its weight bytes? the three per-layer projections alone,
#    cold (weights streamed from memory) against hot (one L2-resident copy), and ncu of the
#    output projection and the q/kv down projection, cold and hot, with stall reasons.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 90 python -m pytest -p no:cacheprovider tests/test_loss.py --tb=short > "$OUT/pytest_loss.txt" 2>&1
echo "pytest loss rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest_loss.txt" | tail -3
OUT=$OUT/preload bash benchmarks/e2e_decode/results/h200/preload/run_call3.sh
for mode in cold hot; do
  flag=""; [ $mode = hot ] && flag=--hot
  timeout 120 python benchmarks/e2e_decode/bench_skinny.py --rows 1 --quick $flag \
    --shapes "q_kv_down,wq_b,wo +" --out "$OUT/skinny_$mode" 2>&1 | grep -E "^\| (q_kv|wq_b|wo)" \
    | sed "s/^/[$mode] /"
done
M=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,lts__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__registers_per_thread,launch__occupancy_limit_shared_mem,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__cycles_active.avg
for shape in "wo + residual" "q_kv_down (mlra_4)"; do
  tag=$(echo "$shape" | cut -c1-4 | tr -c 'a-z\n' '_')
  for cc in all none; do
    timeout 90 ncu --cache-control $cc --metrics $M -k regex:_skinny_kernel --launch-skip 3 \
      --launch-count 1 python benchmarks/e2e_decode/ncu_skinny.py "$shape" > "$OUT/ncu_${tag}_$cc.txt" 2>&1
    echo "== ncu $shape, cache-control $cc (all = flushed: cold; none = hot)"
    grep -E "^\s+(gpu__|dram__|lts__|sm__|launch__|smsp__)" "$OUT/ncu_${tag}_$cc.txt" | awk '{print $1, $(NF)}'
  done
done
