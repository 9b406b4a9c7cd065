"""Perplexity: hand-computed values, non-overlapping windows without carry-over, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mlra import DataError, ModelConfig, Transformer
from mlra.cli import main
from mlra.data.shards import write_shard
from mlra.data.tokenizers import ByteTokenizer
from mlra.evaluate import evaluate_shards, format_table, num_windows, perplexity
from mlra.io import save_model

PROBS = torch.tensor([0.5, 0.25, 0.125, 0.125])


class FixedDistribution(nn.Module):
    """Predicts the same next-token distribution PROBS at every position."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(family="standard", vocab_size=4, d_model=4, n_layers=1,
                                  n_heads=1, n_kv_heads=1, head_dim=4, intermediate_size=4)
        self.dummy = nn.Parameter(torch.zeros(1))

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return PROBS.log().expand(*hidden.shape[:-1], 4)


def test_hand_computed_perplexity(tmp_path: Path) -> None:
    # 14 tokens, block 4 -> (14 - 1) // 4 = 3 windows predicting tokens[1:13]
    tokens = [3, 0, 1, 0, 2, 0, 0, 1, 3, 0, 1, 2, 0, 3]
    path = write_shard(tmp_path / "Toy_eval.bin", np.array(tokens))
    (res,) = evaluate_shards(FixedDistribution(), [path], block_size=4, batch_size=2)
    # targets 0,1,0,2,0,0,1,3,0,1,2,0: six 0s (ln 2 each), three 1s (2 ln 2), three 2/3s (3 ln 2)
    expected = (6 * 1 + 3 * 2 + 3 * 3) * math.log(2) / 12
    assert res.name == "Toy" and res.windows == 3 and res.tokens == 12
    assert res.loss == pytest.approx(expected, rel=1e-6)
    assert res.perplexity == pytest.approx(2 ** (21 / 12), rel=1e-6)
    # max_tokens=9 rounds down to two whole windows: targets 0,1,0,2,0,0,1,3
    capped = perplexity(FixedDistribution(), np.array(tokens), block_size=4, max_tokens=9)
    assert capped.windows == 2
    assert capped.loss == pytest.approx((4 * 1 + 2 * 2 + 2 * 3) * math.log(2) / 8, rel=1e-6)


def test_window_count_and_short_data() -> None:
    assert num_windows(2049, 2048) == 1 and num_windows(2048, 2048) == 0
    assert num_windows(10**8, 2048, max_tokens=10**8) == 48828
    with pytest.raises(DataError, match="do not fill one window"):
        perplexity(FixedDistribution(), np.arange(4) % 4, block_size=4)


def _tiny(tmp_path: Path) -> tuple[Transformer, Path]:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("mlra_2", size="tiny", zero_init_output=False, n_layers=2,
                             max_seq_len=64)
    model = Transformer(cfg).eval()
    save_model(model, tmp_path / "model")
    ByteTokenizer().save(tmp_path / "model")
    return model, tmp_path / "model"


def test_windows_are_independent_and_match_direct_computation(tmp_path: Path) -> None:
    model, _ = _tiny(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 512, size=3 * 16 + 5)
    res = perplexity(model, tokens, block_size=16, batch_size=2)
    nll = []
    with torch.no_grad():
        for w in range(3):  # each window alone: no context carried over
            x = torch.tensor(tokens[w * 16:(w + 1) * 16 + 1], dtype=torch.long)[None]
            logp = torch.log_softmax(model(x[:, :-1]).logits.double(), -1)
            nll.append(-logp[0].gather(-1, x[0, 1:, None]).squeeze(-1))
    expected = torch.cat(nll).mean().item()
    assert res.tokens == 48
    assert res.loss == pytest.approx(expected, rel=1e-5)
    # the same stream with context carried over would give a different number
    with torch.no_grad():
        x = torch.tensor(tokens[:49], dtype=torch.long)[None]
        carried = -torch.log_softmax(model(x[:, :-1]).logits.double(), -1)[0].gather(
            -1, x[0, 1:, None]).mean().item()
    assert abs(carried - expected) > 1e-4


def test_eval_ppl_cli(tmp_path: Path, capsys) -> None:
    model, directory = _tiny(tmp_path)
    rng = np.random.default_rng(1)
    a = write_shard(tmp_path / "A_eval.bin", rng.integers(0, 512, 200))
    b = write_shard(tmp_path / "B_eval.bin", rng.integers(0, 512, 100))
    code = main(["eval", "ppl", "--checkpoint", str(directory), "--data", str(a), str(b),
                 "--block-size", "32", "--batch-size", "2", "--json", "--no-progress"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    sets = {s["name"]: s for s in out["sets"]}
    assert sets["A"]["tokens"] == 6 * 32 and sets["B"]["tokens"] == 3 * 32
    want = evaluate_shards(model, [a, b], block_size=32)
    assert sets["A"]["loss"] == pytest.approx(want[0].loss, rel=1e-5)
    assert sets["B"]["perplexity"] == pytest.approx(want[1].perplexity, rel=1e-5)
    table = format_table(want)
    assert "| A |" in table and "mean of 2 sets" in table
    # the table form, and a shard made with a bigger vocabulary is a one-line error
    assert main(["eval", "ppl", "--checkpoint", str(directory), "--data", str(a),
                 "--block-size", "32", "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out
    bad = write_shard(tmp_path / "bad.bin", np.array([1, 2, 600, 3]))
    assert main(["eval", "ppl", "--checkpoint", str(directory), "--data", str(bad),
                 "--block-size", "2", "--no-progress"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err


def test_eval_ppl_defaults_to_builtin_validation(tmp_path: Path, capsys) -> None:
    from mlra.data.corpus import builtin_validation_shard

    _, directory = _tiny(tmp_path)
    code = main(["eval", "ppl", "--checkpoint", str(directory), "--tokens", "128",
                 "--block-size", "64", "--json", "--no-progress"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (s,) = out["sets"]
    assert s["tokens"] == 128 and s["path"] == str(builtin_validation_shard(ByteTokenizer()))


def test_eval_ppl_on_official_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    from test_official_load import VOCAB, official_state, write_official

    from mlra import load_checkpoint

    state, hf = official_state("mla_no_scale")
    directory = write_official(tmp_path / "official", state, hf, shards=2)
    shard = write_shard(tmp_path / "Wiki_eval.bin", np.random.default_rng(2).integers(0, VOCAB, 80))
    code = main(["eval", "ppl", "--checkpoint", str(directory), "--variant", "mla_no_scale",
                 "--data", str(shard), "--block-size", "16", "--json", "--no-progress"])
    assert code == 0
    (s,) = json.loads(capsys.readouterr().out)["sets"]
    model = load_checkpoint(directory, variant="mla_no_scale")
    want = perplexity(model, np.fromfile(shard, dtype="<u2", offset=1024), block_size=16)
    assert s["name"] == "Wiki" and s["loss"] == pytest.approx(want.loss, rel=1e-6)
    # without --data an official checkpoint needs the GPT-2 vocabulary: clear instructions
    monkeypatch.delenv("MLRA_GPT2_BPE", raising=False)
    monkeypatch.setenv("MLRA_CACHE", str(tmp_path / "empty_cache"))
    assert main(["eval", "ppl", "--checkpoint", str(directory), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "GPT-2 vocabulary" in err and "--gpt2-file" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, match", [
    (["--device", "foo"], "not a valid torch device"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--block-size", "0"], "--block-size must be positive, got 0"),
])
def test_eval_ppl_bad_runtime_args_exit_2_in_one_line(tmp_path: Path, capsys, extra, match):
    _, directory = _tiny(tmp_path)
    shard = write_shard(tmp_path / "A.bin", np.random.default_rng(0).integers(0, 256, 100))
    code = main(["eval", "ppl", "--checkpoint", str(directory), "--data", str(shard),
                 "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
