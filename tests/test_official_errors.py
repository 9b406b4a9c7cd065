"""Official checkpoints: refused pickles, corrupt files, mismatching variants, and the other
checkpoint kinds (our format, training runs) plus ``mlra convert``."""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import pytest
import torch
from test_official_load import VOCAB, official_state, ref_logits, write_official

from mlra import CheckpointError, load_checkpoint
from mlra.cli import main
from mlra.io import save_model


class _Payload:
    """Unpickling this object would call open(marker, "w"): creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))


@pytest.fixture()
def mlra4(tmp_path: Path) -> tuple[Path, dict, dict]:
    state, hf = official_state("mlra_4")
    return write_official(tmp_path / "ckpt", state, hf, shards=3), state, hf


def _shards(directory: Path) -> list[Path]:
    return sorted(directory.glob("pytorch_model-*.bin"))


# ------------------------------------------------------------------------- safety
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, legacy: bool) -> None:
    state, hf = official_state("mla")
    directory = write_official(tmp_path / "evil", state, hf, shards=1)
    marker = tmp_path / "PWNED"
    payload = dict(state)
    payload["transformer.h.0.attn.c_proj.weight"] = _Payload(marker)
    target = directory / "pytorch_model.bin"
    if legacy:  # a plain pickle stream, not torch's zip container
        target.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, target)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="unsafe") as err:
        load_checkpoint(directory)
    assert "pytorch_model.bin" in str(err.value)
    assert not marker.exists(), "the pickle payload ran"


def test_malicious_shard_is_refused(mlra4, tmp_path: Path) -> None:
    directory, state, _ = mlra4
    marker = tmp_path / "PWNED"
    shard = _shards(directory)[1]
    part = torch.load(shard, weights_only=True)
    part[next(iter(part))] = _Payload(marker)
    torch.save(part, shard)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_checkpoint(directory)
    assert shard.name in str(err.value)
    assert not marker.exists()


# ------------------------------------------------------------------------- corrupt files
def test_missing_shard_names_the_file(mlra4) -> None:
    directory, _, _ = mlra4
    shard = _shards(directory)[2]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard .*{shard.name} is missing"):
        load_checkpoint(directory)


def test_truncated_shard_names_the_file(mlra4) -> None:
    directory, _, _ = mlra4
    shard = _shards(directory)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard.name} is corrupt or truncated"):
        load_checkpoint(directory)


def test_key_listed_in_index_but_absent_from_shard(mlra4) -> None:
    directory, _, _ = mlra4
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
    key, fname = next(iter(index["weight_map"].items()))
    part = torch.load(directory / fname, weights_only=True)
    del part[key]
    torch.save(part, directory / fname)
    with pytest.raises(CheckpointError, match=f"{fname}: key '{key}' is missing"):
        load_checkpoint(directory)


def test_missing_key(tmp_path: Path) -> None:
    state, hf = official_state("gqa")
    del state["transformer.h.1.mlp.c_fc2.weight"]
    directory = write_official(tmp_path / "c", state, hf, shards=2)
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\.mlp\.c_fc2\.weight' is missing"):
        load_checkpoint(directory)


def test_shape_mismatch_names_key_and_file(tmp_path: Path) -> None:
    state, hf = official_state("mlra_2")
    key = "transformer.h.1.attn.kv_b_proj"
    state[key] = state[key][:, :, :-2].clone()
    directory = write_official(tmp_path / "c", state, hf, shards=2)
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
    with pytest.raises(CheckpointError, match="has shape") as err:
        load_checkpoint(directory)
    assert key in str(err.value) and index["weight_map"][key] in str(err.value)


def test_unexpected_key(tmp_path: Path) -> None:
    state, hf = official_state("mha")
    state["transformer.h.0.attn.bias_extra.weight"] = torch.zeros(3)
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    with pytest.raises(CheckpointError, match="unexpected key .*bias_extra"):
        load_checkpoint(directory)


def test_untied_head_is_rejected(tmp_path: Path) -> None:
    state, hf = official_state("mla")
    state["lm_head.weight"] = state["lm_head.weight"] + 0.01
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    with pytest.raises(CheckpointError, match="lm_head.weight.*differs"):
        load_checkpoint(directory)


def test_config_json_disagreeing_with_weights(tmp_path: Path) -> None:
    state, hf = official_state("mlra_4")
    hf["n_layer"] = 5
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    with pytest.raises(CheckpointError, match="n_layer=5 but the weights imply 2"):
        load_checkpoint(directory)



@pytest.mark.parametrize(
    ("variant", "field", "value", "message"),
    [
        ("gqa", "n_head", "12a", r"field 'n_head' must be a positive integer, got '12a'"),
        ("gqa", "group_size", 0, r"field 'group_size' must be a positive integer, got 0"),
        ("gqa", "group_size", -2, r"field 'group_size' must be a positive integer, got -2"),
        ("gqa", "head_dim", [8], r"field 'head_dim' must be a positive integer, got \[8\]"),
        ("mha", "n_head", True, r"field 'n_head' must be a positive integer, got True"),
        ("mlra_4", "block_size", "long", r"field 'block_size' must be a positive integer"),
        ("mlra_4", "n_embd", 2.5, r"field 'n_embd' must be a positive integer, got 2.5"),
    ],
)
def test_malformed_config_json_field(
    tmp_path: Path, capsys, variant: str, field: str, value, message: str
) -> None:
    state, hf = official_state(variant)
    hf[field] = value
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)
    assert main(["convert", str(directory), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert repr(field) in err and not (tmp_path / "o").exists()


def test_group_size_must_divide_n_head(tmp_path: Path) -> None:
    state, hf = official_state("gqa")
    hf["group_size"] = hf["n_head"] + 1
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    with pytest.raises(CheckpointError, match="group_size=.* does not divide n_head"):
        load_checkpoint(directory)


def test_integral_config_values_in_other_spellings_load(tmp_path: Path) -> None:
    state, hf = official_state("gqa")
    hf["n_head"], hf["group_size"] = str(hf["n_head"]), float(hf["group_size"])
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    assert load_checkpoint(directory).config.n_heads == int(hf["n_head"])


# ------------------------------------------------------------------------- variants
@pytest.mark.parametrize(
    "variant, message",
    [
        ("mla", "its weights are mlra_4"),
        ("gla_4", "its weights are mlra_4"),
        ("mlra_4_gated", "has no output-gate weights"),
        ("gqa_no_scale", "_no_scale applies only"),
        ("mlra_8", "unknown variant"),
    ],
)
def test_variant_must_match_the_files(mlra4, variant: str, message: str) -> None:
    directory, _, _ = mlra4
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory, variant=variant)


def test_gated_checkpoint_needs_gated_variant(tmp_path: Path) -> None:
    state, hf = official_state("gqa_gated")
    directory = write_official(tmp_path / "c", state, hf, shards=1)
    with pytest.raises(CheckpointError, match="use --variant gqa_gated"):
        load_checkpoint(directory, variant="gqa")
    assert load_checkpoint(directory, variant="gqa_gated_xxl").config.output_gate


def test_variant_aliases_and_no_scale_option(mlra4) -> None:
    directory, state, hf = mlra4
    assert load_checkpoint(directory, variant="MLRA-4").config.name == "mlra_4"
    m = load_checkpoint(directory, variant="mlra_4_normal_initialization")
    assert m.config.latent_scaling
    m = load_checkpoint(directory, latent_scaling=False)
    assert m.config.name == "mlra_4_no_scale" and not m.config.latent_scaling
    with torch.no_grad():
        torch.testing.assert_close(
            m(_ids()).logits, ref_logits(state, hf, "mlra_4_no_scale", _ids()),
            atol=5e-3, rtol=1e-4,
        )


# ------------------------------------------------------------------------- paths and kinds
def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "file.bin")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_checkpoint(tmp_path / "hf")


def test_training_run_directory_resolves_latest(mlra4, tmp_path: Path) -> None:
    directory, _, _ = mlra4
    model = load_checkpoint(directory)
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_000007"
    save_model(model, step)
    (step / "trainer_state.json").write_text("{}")
    (run / "latest").write_text("checkpoints/step_000007\n")
    again = load_checkpoint(run)
    with torch.no_grad():
        assert torch.equal(again(_ids()).logits, model(_ids()).logits)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(run, variant="mla")


def test_convert_round_trip_without_the_original(mlra4, tmp_path: Path, capsys) -> None:
    directory, state, hf = mlra4
    out = tmp_path / "converted"
    assert main(["convert", str(directory), "--out", str(out)]) == 0
    assert "mlra_4" in capsys.readouterr().out
    assert json.loads((out / "mlra_tokenizer.json").read_text())["kind"] == "gpt2"
    for f in directory.iterdir():
        f.unlink()
    directory.rmdir()
    model = load_checkpoint(out)
    assert model.config.name == "mlra_4"
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, ref_logits(state, hf, "mlra_4", _ids()),
                                   atol=5e-3, rtol=1e-4)
    # refuses to overwrite, one-line error, exit status 2
    assert main(["convert", str(out), "--out", str(out)]) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert main(["convert", str(out), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "already holds a model" in err and "Traceback" not in err


def test_convert_cli_variant_error(mlra4, tmp_path: Path, capsys) -> None:
    directory, _, _ = mlra4
    code = main(["convert", str(directory), "--out", str(tmp_path / "o"), "--variant", "gqa"])
    assert code == 2
    assert "does not match" in capsys.readouterr().err
