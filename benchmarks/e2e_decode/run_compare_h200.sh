#!/usr/bin/env bash
# One device call: the decode step of the commit a session started from (its src/ and
# benchmarks/e2e_decode/ carried as .baseline/, e.g. `git archive c001910 src
# benchmarks/e2e_decode | tar -x -C .baseline`) beside the current one, same machine, same run;
# then where the current step's time goes at batch 1 and 32. OUT=dir bash THIS_FILE
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT"
B1="--variants mlra_4,mla,gqa --contexts 8192,131072 --batches 1 --modes fused --reps 30"
B32="--variants mlra_4 --contexts 16384 --batches 32 --modes fused --reps 15"
keep='ms, floor|rror'
for side in before after; do
  if [ $side = before ]; then root=.baseline; else root=.; fi
  for args in "$B1" "$B32"; do
    tag=$([ "$args" = "$B1" ] && echo b1 || echo b32)
    PYTHONPATH=$PWD/$root/src timeout ${T_BENCH:-110} python $root/benchmarks/e2e_decode/bench_decode.py \
      $args --out "$OUT/$side-$tag" 2>&1 | grep -E "$keep" | sed "s/^/$side /" | tail -8
  done
done
export PYTHONPATH=$PWD/src
timeout 60 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --modes fused \
  --top 8 --out "$OUT/profile" 2>&1 | grep -E "^## |^\| " | head -12
timeout 60 python benchmarks/e2e_decode/profile_step.py --variant mlra_4 --modes fused \
  --batch 32 --context 16384 --top 10 --out "$OUT/profile_b32" 2>&1 | grep -E "^## |^\| " | head -14
cd "$OUT" && tar czf results.tgz before-* after-* profile profile_b32 && rm -rf before-* after-* profile profile_b32
