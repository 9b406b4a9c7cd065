"""Translation equivariance: shifting every position leaves every variant unchanged; the
RoPE-before-up-projection construction does not; left padding equals unpadded generation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, tiny_model

import mlra
from mlra.analysis.equivariance import (
    attention_logits,
    left_padding_demo,
    measure_variant,
    rope_order_counterexample,
)
from mlra.cli import main
from mlra.layers import Rotary


def test_position_shift_leaves_outputs_unchanged(variant):
    res = measure_variant(variant, tiny_config(variant), deltas=(3, 1000, 100_000), seq_len=12,
                          dtype=torch.float32)
    assert res.measured == "unchanged"
    for row in res.rows:
        assert max(row.logits, row.attention_output, row.layer_output, row.model_logits) <= 1e-5


def test_shifted_position_ids_through_the_model(variant):
    model = tiny_model(variant)
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    ref = model(ids).logits
    pos = torch.arange(10).expand(2, 10) + torch.tensor([[17], [5000]])
    got = model(ids, position_ids=pos).logits
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_rope_before_up_projection_is_not_equivariant():
    bad = rope_order_counterexample(True, deltas=(1, 1000), seq_len=12, dtype=torch.float32)
    good = rope_order_counterexample(False, deltas=(1, 1000), seq_len=12, dtype=torch.float32)
    assert bad.measured == "changes" and min(r.logits for r in bad.rows) > 1e-2
    assert good.measured == "unchanged" and max(r.logits for r in good.rows) <= 1e-5


@pytest.mark.parametrize("name", ["mha", "gta", "tpa", "mla", "gla_4", "mlra_2"])
def test_attention_logits_reproduce_the_layer(name):
    """softmax(attention_logits) . V equals the attention layer, so the analysis measures the
    logits the layer really uses."""
    torch.manual_seed(0)
    cfg = tiny_config(name)
    attn = mlra.Transformer(cfg).layers[0].attn.double()
    T = 6
    x = torch.randn(1, T, cfg.d_model, dtype=torch.float64)
    rope = Rotary(torch.arange(T)[None] + 11)
    logits = attention_logits(attn, x, rope)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    state = attn.kv_state(x, rope)
    if cfg.family == "latent":
        _, w_uv = attn.up_weights()  # [NB, G, w, Hg, dh]
        NB, G = attn.branches, attn.groups
        lat = state["latent"].reshape(1, T, NB, G, attn.width)
        v = torch.einsum("bscgw,cgwid->bcgsid", lat, w_uv)  # per (branch, group) head values
        o = torch.einsum("bcgits,bcgsid->btgid", p.view(1, NB, G, -1, T, T), v)
        o = o.reshape(1, T, -1) * attn.out_scale
    else:
        _, v = attn.expand(state)
        v = v.repeat_interleave(cfg.n_heads // v.shape[2], dim=2)
        o = torch.einsum("bhts,bshd->bthd", p, v).reshape(1, T, -1)
    ref = attn.attend(attn.query(x, rope), state, None)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["gqa", "mfa", "mlra_4", "gla_2"])
def test_left_padded_batch_generates_like_each_prompt_alone(name):
    row = left_padding_demo(name, tiny_config(name), prompt_lengths=(3, 9, 6), new_tokens=4,
                            dtype=torch.float32)
    assert row.tokens_equal and row.max_logit_diff <= 1e-4


def test_cli_analyze_equivariance_json(capsys):
    assert main(["analyze", "equivariance", "--model", "mlra_4,gqa", "--deltas", "2,1e6",
                 "--seq-len", "8", "--json", "--no-padding-demo"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["variant"] for v in out["variants"]] == ["mlra_4", "gqa"]
    assert all(v["measured"] == "unchanged" for v in out["variants"])
    assert [r["delta"] for r in out["variants"][0]["rows"]] == [2, 1_000_000]
    assert {c["variant"]: c["measured"] for c in out["counterexample"]} == {
        "rope_before_up_projection": "changes", "rope_after_up_projection": "unchanged"}
    assert main(["analyze", "equivariance", "--model", "mlra_4", "--deltas", "1",
                 "--seq-len", "8"]) == 0
    text = capsys.readouterr().out
    assert "| mlra_4 | partial | equivariant" in text and "tokens equal" in text
    assert main(["analyze", "equivariance", "--model", "nope"]) == 2
