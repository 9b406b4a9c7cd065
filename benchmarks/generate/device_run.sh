#!/usr/bin/env bash
# One device call: the GPU tests of CUDA-graph decoding and the kernels, `mlra generate` with
# and without graphs at TP 1 and TP 2 (NCCL, when two GPUs are visible), then the generate
# benchmark.   bash benchmarks/generate/device_run.sh "$OUT"
set -uo pipefail
OUT=${1:?usage: device_run.sh OUT}
export PYTHONPATH=src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
    NVSHMEM_DISABLE_NVLS=1 GLOO_SOCKET_IFNAME=lo NCCL_SOCKET_IFNAME=lo
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
python -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py tests/test_kernels.py -rs 2>&1 \
    | tee "$OUT/pytest.log" | tail -15
python - <<'PY'
import torch
from mlra import ModelConfig, Transformer
from mlra.io import save_model
torch.manual_seed(0)
cfg = ModelConfig.preset("mlra_4", size="tiny", zero_init_output=False)
save_model(Transformer(cfg), "/tmp/ck")
PY
tokens() { python -c "import json,sys; print([r['tokens'] for r in json.load(open(sys.argv[1]))['results']])" "$1" 2>&1 | tail -1; }
A="--checkpoint /tmp/ck --ids 1,2,3,4,5 --ids 9,8 --max-new-tokens 24 --json"
for tp in 1 2; do
  [ "$tp" -le "$(nvidia-smi -L | wc -l)" ] || continue
  timeout 240 python -m mlra generate $A --tp $tp > "$OUT/gen_tp$tp.json" 2>> "$OUT/gen.err"
  echo "tp $tp graphs rc $?: $(tokens "$OUT/gen_tp$tp.json")"
  timeout 240 python -m mlra generate $A --tp $tp --no-cuda-graphs > "$OUT/gen_tp${tp}_eager.json" \
      2>> "$OUT/gen.err"
  echo "tp $tp eager  rc $?: $(tokens "$OUT/gen_tp${tp}_eager.json")"
done
tail -n 4 "$OUT/gen.err"
timeout 360 python benchmarks/generate/bench_generate.py --out "$OUT" 2>&1 | tail -30
