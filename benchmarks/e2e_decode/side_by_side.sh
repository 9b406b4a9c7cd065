# Sourced by the device scripts that time this tree beside the session's starting commit
# (carried as .baseline/: `git archive START src benchmarks/e2e_decode | tar -x -C .baseline`).
# Needs OUT (what comes back: one archive, refreshed after every step) and RES (where the
# results land). `run SIDE TAG TIMEOUT ARGS...`: SIDE before (.baseline) or after (this tree).
pack() { tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null; }
run() {
  local side=$1 tag=$2 t=$3; shift 3
  local root=.; [ "$side" = before ] && root=.baseline
  [ -d "$root/src" ] || { echo "$side: no $root/src"; return; }
  PYTHONPATH=$PWD/$root/src timeout "$t" python $root/benchmarks/e2e_decode/bench_decode.py \
    "$@" --out "$RES/$side-$tag" 2>&1 | grep -E "ms, floor|rror" | sed "s/^/$side /" | tail -12
  pack
}
