#!/usr/bin/env bash
# Twelfth session (2026-12-04), about 5 minutes. W_UV and the output projection in one launch
# (gluon_skinny.uv_output_projection_resident: its 18.9 MB of weights requested from the split
# merge's release on, a grid barrier between the head outputs and the products). GPU tests
# (against the reference, repeated calls and graph replays, the dispatch; PDL in a graph
# against plain launches bit for bit; the fused bf16 step against fp32), then the in-step A/B
# (MLRA_UV_OPROJ=0: the two launches).
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/products/run_call9.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src:$PWD/benchmarks/e2e_decode
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 170 env -u TRITON_INTERPRET python -m pytest -p no:cacheprovider tests/test_uv_oproj.py \
  tests/test_pdl.py tests/test_step_kernels.py -k "uv_oproj or (pdl_step and (mlra_4 or mla)) or
  (fused_bf16 and batch1 and (mlra_4 or mla))" -rA --tb=short -x > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/log.txt"
grep -cE "^PASSED" "$OUT/pytest.txt" | sed 's/^/passed: /' | tee -a "$OUT/log.txt"
grep -E "^(FAILED|ERROR)|^E " "$OUT/pytest.txt" | head -8 | tee -a "$OUT/log.txt"
C="{\"two launches\": {\"MLRA_UV_OPROJ\": \"0\"}, \"one launch\": {}}"
for v in mlra_4 mla; do
  timeout 110 python benchmarks/e2e_decode/env_sweep.py --variant $v --rounds 3 --out "$OUT/sweep_$v" \
    --candidates "$C" 2>&1 | grep -E "^\||rror" | tee -a "$OUT/log.txt"
done
