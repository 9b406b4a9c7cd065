"""``mlra compare`` at a toy budget: the table, its files, KV columns and reuse of runs."""

from __future__ import annotations

import json

import pytest
import torch

from mlra.cli import main
from mlra.train.compare import CompareConfig, run_compare

pytestmark = pytest.mark.usefixtures("one_thread")


TOY = dict(variants=("mha", "mlra_2"), steps=2, batch_size=2, seq_len=32, eval_interval=1,
           val_tokens=128, warmup_steps=1, progress=False, workers=1)


def test_compare_writes_table_and_reuses_runs(tmp_path, mlra_cache, capsys):
    cc = CompareConfig(out=str(tmp_path / "cmp"), **TOY)
    logs: list[str] = []
    rows = run_compare(cc, log=logs.append)
    table = capsys.readouterr().out
    assert [r.variant for r in rows] == ["mha", "mlra_2"]
    by = {r.variant: r for r in rows}
    # Tiny preset: MHA caches K and V of 4 heads x 32; MLRA-2 four latent heads of 32 + RoPE 16.
    assert (by["mha"].kv_per_token_per_layer, by["mha"].kv_per_token_per_layer_per_device) == \
        (256, 64)
    assert (by["mlra_2"].kv_per_token_per_layer,
            by["mlra_2"].kv_per_token_per_layer_per_device) == (144, 48)
    for r in rows:
        assert r.val_ppl == pytest.approx(torch.tensor(r.val_loss).exp().item())
        assert r.params > 500_000 and r.tokens_per_s > 0 and r.train_tokens == 2 * 2 * 32
        assert [s for s, _ in r.val_curve] == [0, 64, 128]  # in training tokens
    assert "| mha |" in table and "| mlra_2 |" in table and "KV/token/layer/device @TP4" in table
    out = tmp_path / "cmp"
    data = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["mha", "mlra_2"]
    assert (out / "results.md").read_text().count("| m") == 2
    try:
        import matplotlib  # noqa: F401

        assert (out / "val_curves.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert any("no plot" in line for line in logs)
    assert (out / "mha" / "latest").is_file()

    # Same settings: nothing is retrained; a different TP degree only changes the KV column.
    logs.clear()
    again = run_compare(CompareConfig(out=str(out), tp=2, **TOY), log=logs.append)
    assert sum("reusing" in line for line in logs) == 2
    assert [r.val_loss for r in again] == [r.val_loss for r in rows]
    assert {r.variant: r.kv_per_token_per_layer_per_device for r in again} == \
        {"mha": 128, "mlra_2": 80}


def test_compare_cli_with_parallel_workers(tmp_path, mlra_cache, capsys):
    code = main(["compare", "--variants", "gqa,gla_2", "--steps", "1", "--batch-size", "1",
                 "--seq-len", "16", "--eval-interval", "1", "--val-tokens", "32",
                 "--out", str(tmp_path / "c"), "--no-progress", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.index("| gqa |") < out.index("| gla_2 |")  # table in the requested order
    data = json.loads((tmp_path / "c" / "results.json").read_text())
    assert data["workers"] == 2 and [r["variant"] for r in data["rows"]] == ["gqa", "gla_2"]
