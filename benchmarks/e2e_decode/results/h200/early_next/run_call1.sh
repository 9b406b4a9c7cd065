#!/usr/bin/env bash
# Tenth session (2026-12-04), about 4 minutes: the query up-projection starts 0.24 us before
# its wait (results/h200/trace_ninth: launched only after the q/kv down's main loop), so its
# L2 prefetch has no time and its 9.4 MB stream from DRAM takes 4.45 us. Candidate: the
# q/kv down projection lets it launch right after its own wait (SkinnyConfig.early_next), so
# the q up's prefetch overlaps the q/kv down's stream; likewise the q up for the next launch
# and GQA's q/k/v. Inside the steps (step_tune.py, interleaved rounds), entry in use vs the
# same entry with early_next.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/early_next/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
for vs in mlra_4:m1:k3072:n1024x576:plain,m1:k1024:n4608:plain mla:m1:k3072:n1536x576:plain,m1:k1536:n4608:plain \
          gqa:m1:k3072:n3072x768x768:plain; do
  v=${vs%%:*}; shapes=${vs#*:}
  for c in 8192 131072; do
    [ $v = gqa ] && [ $c = 131072 ] && continue
    echo "== $v $c" | tee -a "$OUT/log.txt"
    timeout 100 python benchmarks/e2e_decode/step_tune.py --variant $v --context $c --rounds 5 \
      --shapes $shapes --setting early_next --out "$OUT/${v}_$c" 2>&1 | grep -E "^\| [^c-]|rror" | tee -a "$OUT/log.txt"
  done
done
