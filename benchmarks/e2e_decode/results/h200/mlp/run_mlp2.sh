#!/usr/bin/env bash
# Second device call (about 5 minutes): the one-launch MLP's sweep over pipeline depth and
# programs per multiprocessor at MLRA-4's shape; the fastest one-launch configuration then
# runs issue 13's batch-1 steps (MLRA_MLP_CONFIG) beside the starting commit (.baseline).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/mlp/run_mlp2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}
timeout 150 python benchmarks/e2e_decode/bench_mlp.py --shapes mlra_4 --sweep \
  --out "$OUT/mlp-sweep2" 2>&1 | grep "^|" | tail -22
best=$(python - "$OUT/mlp-sweep2/mlp.json" <<'PY'
import json, re, sys
rows = [r for r in json.load(open(sys.argv[1]))["results"]
        if "us" in r and r["path"].startswith("one launch ")]
r = min(rows, key=lambda r: r["us"])
bh, nw, st, p = re.match(r"one launch (\d+)x(\d+)w x(\d+) (\d+)/SM", r["path"]).groups()
cfg = dict(block_h=int(bh), num_warps=int(nw), num_stages=int(st), per_sm=int(p))
print(json.dumps(cfg))
PY
)
echo "fastest one-launch configuration: $best"
RES=$OUT/steps2; mkdir -p "$RES"; source benchmarks/e2e_decode/side_by_side.sh
run before b1 120 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
  --modes fused
export MLRA_MLP_CONFIG="$best"
run after b1 120 --variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --reps 30 \
  --modes fused
