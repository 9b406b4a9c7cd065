#!/usr/bin/env bash
# One device call: the serving tests on the GPU box, then the load benchmark of paper-size
# MLRA-4 / MLA / GQA (random weights, bf16, CUDA graphs).
#   bash benchmarks/serve/device_run.sh "$OUT"      (then copy $OUT to results/h200/)
set -uo pipefail
OUT=${1:?usage: device_run.sh OUT}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
python -m pytest -q -p no:cacheprovider tests/test_serve_engine.py 2>&1 | tee "$OUT/pytest.log" \
    | tail -5
timeout 540 python benchmarks/serve/bench_serve.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" \
    | tail -40
