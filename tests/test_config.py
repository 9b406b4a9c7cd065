"""Configuration validation, presets and JSON round-trip."""

from __future__ import annotations

import pytest

import mlra
from mlra import ConfigError, ModelConfig


@pytest.mark.parametrize(
    ("name", "overrides", "field", "words"),
    [
        ("mlra_4", dict(kv_lora_rank=510), "kv_lora_rank", "divisible"),
        ("gla_2", dict(n_heads=5), "n_heads", "latent_groups"),
        ("gqa", dict(n_kv_heads=3), "n_kv_heads", "divisible"),
        ("mla", dict(rope_dim=63), "rope_dim", "even"),
        ("mha", dict(head_dim=33), "head_dim", "even"),
        ("mha", dict(d_model=0), "d_model", "positive"),
        ("mlra_2", dict(latent_branches=0), "latent_branches", "positive"),
        ("gta", dict(rope_dim=64, head_dim=64), "rope_dim", "smaller"),
    ],
)
def test_bad_configuration_names_field_and_constraint(name, overrides, field, words):
    with pytest.raises(ValueError) as info:
        ModelConfig.preset(name, size="tiny", **overrides)
    assert field in str(info.value) and words in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        ModelConfig.preset("mlra_3")
    for name in mlra.VARIANTS:
        assert name in str(info.value)


def test_unknown_size_and_field():
    with pytest.raises(ConfigError, match="valid sizes"):
        ModelConfig.preset("mla", size="huge")
    with pytest.raises(ConfigError, match="nonsense"):
        ModelConfig.preset("mla", nonsense=1)
    with pytest.raises(ConfigError, match="family"):
        ModelConfig(family="sparse")


def test_preset_names_accept_paper_spelling():
    assert ModelConfig.preset("MLRA-4") == ModelConfig.preset("mlra_4")


def test_paper_dimensions():
    cfg = ModelConfig.preset("mlra_4")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim) == (3072, 24, 24, 128)
    assert (cfg.kv_lora_rank, cfg.rope_dim, cfg.q_lora_rank) == (512, 64, 1024)
    assert (cfg.latent_branches, cfg.latent_groups, cfg.latent_head_dim) == (4, 1, 128)
    assert cfg.softmax_scale == pytest.approx(192 ** -0.5)
    mla = ModelConfig.preset("mla")
    assert (mla.q_lora_rank, mla.n_latent_heads, mla.latent_head_dim) == (1536, 1, 512)
    assert ModelConfig.preset("mlra_2").latent_groups == 2
    assert ModelConfig.preset("gqa").n_kv_heads == 6
    assert ModelConfig.preset("mqa").n_kv_heads == 1
    assert ModelConfig.preset("mfa").head_dim == 256
    assert ModelConfig.preset("mha").softmax_scale == pytest.approx(128 ** -0.5)


def test_json_round_trip(tmp_path):
    cfg = ModelConfig.preset("gla_2", size="tiny", output_gate=True, latent_scaling=False)
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        ModelConfig.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown config field"):
        ModelConfig.from_dict({**cfg.to_dict(), "extra": 1})
