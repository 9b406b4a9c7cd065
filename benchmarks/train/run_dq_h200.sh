#!/usr/bin/env bash
# One device step (about 3 minutes): the training-attention tests compiled on the GPU, then the
# backward with dQ by a separate pass beside dQ by atomics, side by side. OUT=dir bash THIS_FILE
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT/train"
timeout ${T_TESTS:-100} python -m pytest -q -x -p no:cacheprovider tests/test_train_attention.py \
  2>&1 | tail -2
timeout ${T_BENCH:-150} python benchmarks/train/bench_attn_kernel.py --dq-modes \
  --out "$OUT/train" 2>&1 | grep -vE "^\s*$" | tail -16
