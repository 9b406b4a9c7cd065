#!/usr/bin/env bash
# Call 2 (fixed_cost.py after call 1 crashed on its read flush's torch.sum signature).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/.carry
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 200 python benchmarks/decode/fixed_cost.py --out "$OUT" 2>&1 | tee "$OUT/fixed_cost.txt"
