"""Two processes on CPU (gloo, through torchrun) give the same losses as one process with the
same global batch -- with DDP, and with FSDP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mlra import load_checkpoint as load_model
from mlra.checkpoints.runs import resolve_checkpoint
from mlra.data.prepare import prepare
from mlra.train.config import TrainConfig
from mlra.train.metrics import read_metrics
from mlra.train.trainer import train

TEXT = "".join(f"{i} tensor parallel devices hold one latent head each.\n\n" for i in range(400))
COMMON = dict(model="mla", size="tiny", steps=4, seq_len=32, eval_interval=2, val_tokens=256,
              log_interval=1, progress=False, lr=3e-3, warmup_steps=1,
              model_overrides={"n_layers": 2, "zero_init_output": False})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "t.txt").write_text(TEXT)
    prepare([str(root / "t.txt")], root / "shards", "byte", progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One process, micro-batch 2 x 2 accumulation steps = global batch 4."""
    out = tmp_path_factory.mktemp("single") / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**COMMON, data=str(data), out=str(out), batch_size=2, grad_accum=2),
              log=lambda m: None)
    finally:
        torch.set_num_threads(old)
    return out


def _losses(run):
    return {(r["split"], r["step"]): r["loss"] for r in read_metrics(run / "metrics.jsonl")}


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, data, reference, fsdp):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mlra.cli", "train", "--data", str(data), "--out", str(out),
        "--model", "mla", "--set", "n_layers=2", "--set", "zero_init_output=false",
        "--steps", "4", "--seq-len", "32", "--batch-size", "2", "--grad-accum", "1",
        "--eval-interval", "2", "--val-tokens", "256", "--log-interval", "1", "--lr", "3e-3",
        "--warmup-steps", "1", "--no-progress",
    ] + (["--fsdp"] if fsdp else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = _losses(reference), _losses(out)
    assert set(got) == set(want) and len(want) == 7  # 4 train rows, val at 0, 2, 4
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-5, rel=0), key
    a = load_model(resolve_checkpoint(reference)).state_dict()
    b = load_model(resolve_checkpoint(out)).state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
