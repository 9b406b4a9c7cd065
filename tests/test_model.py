"""The model shell and every variant: shapes, causality, loss, masks, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_model

import mlra
from mlra import ModelConfig, Transformer
from mlra.kv_accounting import kv_elements_total
from mlra.layers import Rotary

PAPER_PARAMS = (2_872_000_000, 2_873_999_999)


@pytest.mark.parametrize("name", mlra.VARIANTS)
def test_paper_preset_parameter_count(name):
    cfg = ModelConfig.preset(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    n = model.num_params()
    assert PAPER_PARAMS[0] <= n <= PAPER_PARAMS[1], f"{name}: {n:,}"
    assert n == cfg.num_params()


def test_paper_attention_parameter_counts_match_official():
    # the published 2.9B models, docs/checkpoints.md (attention params over 24 layers, in millions)
    expected = {"mha": 906.0, "gqa": 566.2, "mqa": 471.9, "gta": 514.3, "mfa": 943.8,
                "tpa": 338.6, "mla": 627.6, "gla_2": 495.5, "gla_4": 476.6, "mlra_2": 495.5,
                "mlra_4": 533.2}
    for name, millions in expected.items():
        cfg = ModelConfig.preset(name)
        with torch.device("meta"):
            model = Transformer(cfg)
        attn = sum(p.numel() for blk in model.layers for p in blk.attn.parameters())
        assert abs(attn / 1e6 - millions) < 0.06, (name, attn)


@pytest.mark.parametrize("name", ["mla", "gqa", "mlra_4"])
def test_gated_preset_stays_parameter_matched(name):
    cfg = ModelConfig.preset(name, output_gate=True)
    assert cfg.intermediate_size == ModelConfig.preset(name).intermediate_size - 1024
    assert PAPER_PARAMS[0] <= cfg.num_params() <= PAPER_PARAMS[1]


def test_tiny_presets_are_parameter_matched():
    counts = {n: ModelConfig.preset(n, size="tiny").num_params() for n in mlra.VARIANTS}
    ref = counts["mha"]
    for name, n in counts.items():
        assert abs(n - ref) / ref < 0.02, (name, n, ref)


def test_every_variant_shapes_and_loss(variant):
    model = tiny_model(variant)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (3, 11))
    out = model(ids)
    assert out.logits.shape == (3, 11, cfg.vocab_size)
    assert out.loss is None
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    ref = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, cfg.vocab_size), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, ref)
    assert torch.isfinite(out.loss)


def test_every_variant_is_causal(variant):
    model = tiny_model(variant)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    base = model(ids).logits
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % model.config.vocab_size
    out = model(changed).logits
    torch.testing.assert_close(out[:, :7], base[:, :7], rtol=0, atol=1e-6)
    assert (out[:, 7:] - base[:, 7:]).abs().max() > 1e-4  # the future tokens do matter


def test_kv_state_matches_cache_accounting(variant):
    model = tiny_model(variant)
    attn = model.layers[0].attn
    x = torch.randn(2, 5, model.config.d_model)
    rope = Rotary(torch.arange(5).expand(2, 5))
    state = attn.kv_state(x, rope)
    per_token = sum(t[0, 0].numel() for t in state.values())
    assert per_token == kv_elements_total(model.config)
    for t in state.values():
        assert t.shape[:2] == (2, 5)


def test_left_padding_with_attention_mask_equals_unpadded(variant):
    model = tiny_model(variant)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (1, 9))
    alone = model(ids).logits
    padded = torch.cat([torch.full((1, 4), 7), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 9)], dim=1).long()
    out = model(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)


def test_zero_initialised_output_projections():
    model = Transformer(ModelConfig.preset("mlra_4", size="tiny"))
    for block in model.layers:
        assert torch.count_nonzero(block.attn.wo.weight) == 0
        assert torch.count_nonzero(block.mlp.w_down.weight) == 0
    normal = Transformer(ModelConfig.preset("mlra_4", size="tiny", zero_init_output=False))
    std = normal.layers[0].attn.wo.weight.std().item()
    assert 0.015 < std < 0.025
    assert 0.015 < normal.layers[0].attn.wkv_b.std().item() < 0.025


def test_tied_embeddings():
    model = tiny_model("mla")
    h = torch.randn(1, 3, model.config.d_model)
    torch.testing.assert_close(model.logits(h), h @ model.embed.weight.T)
    names = [n for n, _ in model.named_parameters()]
    assert not any("lm_head" in n for n in names)


def test_output_gate_changes_the_function():
    gated = tiny_model("mlra_4", output_gate=True)
    attn = gated.layers[0].attn
    assert attn.wg is not None and attn.wg.weight.shape == (attn.cfg.attn_out_dim, 128)
    x = torch.randn(1, 4, 128)
    o = torch.randn(1, 4, attn.cfg.attn_out_dim)
    torch.testing.assert_close(attn.output(o, x), attn.wo(o * torch.sigmoid(attn.wg(x))))


def test_mlra_with_eight_latent_heads():
    cfg = tiny_config("mlra_4", latent_branches=8)
    assert cfg.n_latent_heads == 8 and cfg.latent_head_dim == cfg.kv_lora_rank // 8
    model = Transformer(cfg)
    out = model(torch.randint(0, cfg.vocab_size, (2, 6)))
    assert out.logits.shape == (2, 6, cfg.vocab_size)
    assert model.layers[0].attn.out_scale == pytest.approx(8 ** -0.5)


def test_explicit_positions_are_used():
    model = tiny_model("mha")
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    a = model(ids).logits
    b = model(ids, position_ids=torch.arange(6)[None] + 1000).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # RoPE: only offsets matter
    scrambled = torch.tensor([[0, 5, 1, 4, 2, 3]])
    assert (model(ids, position_ids=scrambled).logits - a).abs().max() > 1e-3
