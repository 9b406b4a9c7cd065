"""``--tp N`` on the command line: ``mlra generate`` and ``mlra eval ppl`` give the same output
at any degree, ``--json`` reports every rank's cache, a bad degree fails before any process
starts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from mlra import Transformer
from mlra.cli import main
from mlra.data import write_shard
from mlra.io import save_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = Transformer(tiny_config("mlra_4")).eval()
    return str(save_model(model, tmp_path_factory.mktemp("cli") / "mlra4"))


def _json(capfd, argv):
    assert main(argv) == 0
    out = capfd.readouterr().out
    return json.loads(out[out.index("{"):])


def test_generate_tp4_equals_tp1_and_reports_rank_caches(checkpoint, capfd):
    base = ["generate", "--checkpoint", checkpoint, "--ids", "5,6,7,300", "--ids", "1,2",
            "--max-new-tokens", "5", "--device", "cpu", "--json"]
    one = _json(capfd, base)
    four = _json(capfd, [*base, "--tp", "4"])
    assert [r["tokens"] for r in four["results"]] == [r["tokens"] for r in one["results"]]
    assert "tensor_parallel" not in one
    ranks = four["tensor_parallel"]["ranks"]
    cfg = tiny_config("mlra_4")
    per_token = (cfg.latent_head_dim + cfg.rope_dim) * cfg.n_layers * 4  # one latent head, fp32
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert all(r["cache_bytes_per_token"] == per_token for r in ranks)
    assert all(r["cache_bytes_used"] == per_token * (4 + 2 + 2 * 4) for r in ranks)


def test_eval_ppl_tp2_equals_tp1(checkpoint, tmp_path, capfd):
    tokens = torch.randint(0, 256, (700,), generator=torch.Generator().manual_seed(0))
    shard = tmp_path / "val.bin"
    write_shard(shard, tokens.numpy().astype("uint16"))
    base = ["eval", "ppl", "--checkpoint", checkpoint, "--data", str(shard), "--block-size", "64",
            "--batch-size", "4", "--device", "cpu", "--json", "--no-progress"]
    one = _json(capfd, base)["sets"][0]
    two = _json(capfd, [*base, "--tp", "2"])["sets"][0]
    assert one["tokens"] == two["tokens"] > 0
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_bad_degree_fails_before_starting_processes(checkpoint, capfd):
    assert main(["generate", "--checkpoint", checkpoint, "--ids", "1", "--tp", "3",
                 "--device", "cpu"]) == 2
    err = capfd.readouterr().err
    assert "cannot be split 3 ways; allowed tensor-parallel degrees: 1, 2, 4, 8, 16" in err
