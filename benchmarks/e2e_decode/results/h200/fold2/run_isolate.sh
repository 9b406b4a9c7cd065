#!/usr/bin/env bash
# Ran at commit 2a1a695 (the fold and the split floor, with their knobs; both reverted after).
# OUT=dir bash THIS_FILE, carrying .baseline (the session start, 35ed7b2)
export PYTHONUNBUFFERED=1; RES=$OUT/iso; mkdir -p $RES; source benchmarks/e2e_decode/side_by_side.sh
A="--variants mlra_4,mla --contexts 8192,131072 --batches 1 --reps 30 --modes fused"
run before base 120 $A
for f in 1 0; do for s in 1 0; do
  MLRA_FOLD_MERGE=$f MLRA_SPLIT_FLOOR=$s run after f$f-s$s 120 $A
done; done
run before base2 120 $A
