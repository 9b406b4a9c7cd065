#!/usr/bin/env bash
# One device call: environment report, GPU kernel tests at real sizes, then the stages named
# in $STAGES (tune, bench). Logs and results go to $OUT (default ./out/decode).
# FlashMLA: put sgl_kernel (flash_mla.py + flashmla_ops*.so + an empty __init__.py) under
# .carry/ (see benchmarks/decode/NOTES.md); it is optional.
set -u
OUT=${OUT:-out/decode}
STAGES=${STAGES:-"tests bench"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/.carry${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, triton, sys; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/env.txt"
python3 -c "from mlra.bench.flashmla import load_flashmla; m, why = load_flashmla(); print('flashmla:', 'importable' if m else why)" 2>&1 | tee -a "$OUT/env.txt"
for stage in $STAGES; do
  case $stage in
    tests) timeout ${TESTS_TIMEOUT:-240} python3 -m pytest tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" ;;
    tune) timeout ${TUNE_TIMEOUT:-300} python3 benchmarks/decode/tune.py --out "$OUT" ${TUNE_ARGS:-} 2>&1 | tee "$OUT/tune.log" ;;
    bench) timeout ${BENCH_TIMEOUT:-400} python3 -m mlra.cli bench decode --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" ;;
  esac
done
