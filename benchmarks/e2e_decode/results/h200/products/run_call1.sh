#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 5 minutes. Why the resident one-row projections spend
# 1.4-1.7 us on their products after the weights have landed (../resident): (1) ncu's warp-state
# and per-instruction stall sampling of the q/kv down, query up and output projections of layer
# 12 in their place in the eager fused MLRA-4 1 x 8K step, with MLRA_RESIDENT_DIAG=landed (every
# weight box waited for first, so the TMA wait and the products are apart); (2) the step traced
# (per launch shares) for MLRA-4 and MLA; (3) in-step A/B: the next launch let start after x is
# staged instead of right after the wait (MLRA_RESIDENT_CONFIG trigger).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
ncu --version | tail -1 | tee -a "$OUT/log.txt"
MLRA_RESIDENT_DIAG=landed timeout 200 ncu --clock-control none --cache-control none \
  --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats \
  --section WarpStateStats --section SourceCounters --section InstructionStats \
  -k regex:_resident_kernel --launch-skip 36 --launch-count 3 -o "$OUT/resident" \
  python benchmarks/e2e_decode/ncu_step.py --variant mlra_4 --steps 1 > "$OUT/ncu_run.txt" 2>&1
echo "ncu rc=$?" | tee -a "$OUT/log.txt"
ncu -i "$OUT/resident.ncu-rep" --page details > "$OUT/details.txt" 2>&1
grep -E "Duration|Issue Slots Busy|Issued Ipc|No Eligible|Active Warps Per|Warp Cycles Per Issued|Registers Per|Grid Size|Executed Instructions  |Achieved Occ" "$OUT/details.txt" | tee -a "$OUT/log.txt"
ncu -i "$OUT/resident.ncu-rep" --page source --csv --print-source sass > "$OUT/sass.csv" 2>"$OUT/sass_err.txt"
echo "sass rc=$? $(wc -c < "$OUT/sass.csv") bytes" | tee -a "$OUT/log.txt"
ncu -i "$OUT/resident.ncu-rep" --page raw --csv > "$OUT/raw.csv" 2>&1
grep -o "smsp__pcsamp_warps_issue_stalled_[a-z_]*" "$OUT/raw.csv" | sort -u | head -3 >> "$OUT/log.txt"
rm -f "$OUT/resident.ncu-rep"
timeout 150 python benchmarks/e2e_decode/trace_step.py --variants mlra_4,mla --contexts 8192 \
  --out "$OUT/trace" 2>&1 | grep -E "^\||^per step|^layer|rror" | tee -a "$OUT/log.txt"
R='"MLRA_RESIDENT_CONFIG"'
for v in mlra_4 mla; do
  timeout 100 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "{\"default\": {}, \"trigger after x\": {$R: {\"trigger\": \"x\"}}}" 2>&1 \
    | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
