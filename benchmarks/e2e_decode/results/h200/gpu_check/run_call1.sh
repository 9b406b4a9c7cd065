#!/usr/bin/env bash
# 2026-12-03 (fifth session): GPU runs of code last changed on a CPU only -- the Gluon latent
# kernels' shared output epilogue (_store_outputs, PTX-checked), the training probe's
# _overlap_tile helper (PTX-checked), and the batch-1 case of the fused-step GPU test.
# From the repository root: OUT=dir bash benchmarks/e2e_decode/results/h200/gpu_check/run_call1.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
OUT=${OUT:-out}; mkdir -p "$OUT"
timeout 300 python -m pytest -p no:cacheprovider tests/test_gluon_latent.py \
  tests/test_step_kernels.py tests/test_pdl.py --tb=short > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "^E |passed|failed|error" "$OUT/pytest.txt" | tail -8
timeout 170 python benchmarks/train/gluon_attn_probe.py --check > "$OUT/probe_check.txt" 2>&1
echo "probe check rc=$?"; echo "PASS lines: $(grep -c PASS "$OUT/probe_check.txt")"
grep -E "FAIL|rror" "$OUT/probe_check.txt" | head -5
