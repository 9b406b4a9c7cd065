"""Tensor-parallel plans, in one process: allowed degrees, per-rank cache sizes against the
paper's table, and shard maths (the sum of the ranks' partial outputs equals the full layer)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

import mlra
from mlra import ModelConfig, Transformer
from mlra.errors import CheckpointError, ConfigError
from mlra.io import load_state_checked, save_model
from mlra.kv_accounting import decode_config, kv_elements_per_device
from mlra.layers import Rotary
from mlra.parallel import (
    TensorParallelTransformer,
    TPContext,
    allowed_degrees,
    make_plan,
    shard_state_dict,
)
from mlra.parallel.runtime import vocab_parallel_embed

# (variant, degree) pairs to check the shard maths on; tiny models have 4 query heads.
CASES = [
    ("mlra_4", 1), ("mlra_4", 2), ("mlra_4", 4), ("mlra_2", 2), ("mlra_2", 4), ("gla_2", 2),
    ("gla_2", 4), ("gla_4", 4), ("mla", 2), ("mla", 4), ("gqa", 2), ("gqa", 4), ("mha", 4),
    ("mqa", 2), ("gta", 2), ("gta", 4), ("mfa", 2), ("tpa", 4),
]


def _shards(full: Transformer, tp: int) -> list[TensorParallelTransformer]:
    """Every rank's shard model in this process (collectives are identities)."""
    plan = make_plan(full.config, tp)
    state = full.state_dict()
    out = []
    for r in range(tp):
        shard = plan.shard(r)
        with torch.device("meta"):
            ctx = TPContext(r, 1, torch.device("cpu"), None)
            model = TensorParallelTransformer(shard, full.config, ctx)
        load_state_checked(model, shard_state_dict(state, shard), "test")
        out.append(model.eval())
    return out


def _full(name: str, **over) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_config(name, **over)).double().eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrongly sliced norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(("name", "tp"), CASES)
def test_partial_outputs_sum_to_full_layer(name, tp):
    full = _full(name)
    shards = _shards(full, tp)
    x = torch.randn(2, 6, full.config.d_model, dtype=torch.float64)
    rope = Rotary(torch.arange(6).expand(2, 6) + 3)
    with torch.no_grad():
        for i in (0, full.config.n_layers - 1):
            want_attn = full.layers[i].attn(x, rope)
            got_attn = sum(s.layers[i].attn(x, rope) for s in shards)
            torch.testing.assert_close(got_attn, want_attn, rtol=1e-10, atol=1e-12)
            want_mlp = full.layers[i].mlp(x)
            got_mlp = sum(s.layers[i].mlp(x) for s in shards)
            torch.testing.assert_close(got_mlp, want_mlp, rtol=1e-10, atol=1e-12)
        ids = torch.randint(0, full.config.vocab_size, (2, 6))
        emb = sum(vocab_parallel_embed(s.tp, ids, s.embed.weight, s.shard.vocab_start)
                  for s in shards)
        torch.testing.assert_close(emb, full.embed(ids), rtol=0, atol=0)
        logits = torch.cat([torch.nn.functional.linear(x, s.embed.weight) for s in shards], -1)
        torch.testing.assert_close(logits[..., : full.config.vocab_size], full.logits(x))


@pytest.mark.parametrize("over", [dict(output_gate=True), dict(latent_scaling=False)])
@pytest.mark.parametrize(("name", "tp"), [("mlra_4", 4), ("mlra_2", 2), ("mla", 2), ("gqa", 2)])
def test_ablations_shard_exactly(name, tp, over):
    full = _full(name, **over)
    shards = _shards(full, tp)
    x = torch.randn(1, 5, full.config.d_model, dtype=torch.float64)
    rope = Rotary(torch.arange(5)[None])
    with torch.no_grad():
        torch.testing.assert_close(sum(s.layers[1].attn(x, rope) for s in shards),
                                   full.layers[1].attn(x, rope), rtol=1e-10, atol=1e-12)


def test_uneven_vocab_and_mlp_are_padded_and_split():
    full = _full("mlra_4", vocab_size=509, intermediate_size=301)
    shards = _shards(full, 4)
    assert [s.shard.config.intermediate_size for s in shards] == [76, 75, 75, 75]
    assert [s.embed.weight.shape[0] for s in shards] == [128] * 4
    assert shards[-1].embed.weight[125:].abs().sum() == 0  # zero padding past the vocabulary
    assert all(s.config.vocab_size == 509 for s in shards)
    x = torch.randn(1, 3, full.config.d_model, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(sum(s.layers[0].mlp(x) for s in shards), full.layers[0].mlp(x))


def test_mlra4_plan_matches_the_paper():
    """Paper's decoding config: rank r of MLRA-4 at TP 4 holds latent head r (d_h) plus the
    RoPE key (d_h / 2), computes all 64 query heads, keeps the full model's 1/sqrt(4)."""
    cfg = decode_config("mlra_4")
    plan = make_plan(cfg, 4)
    for r, shard in enumerate(plan.shards):
        local = shard.config
        assert (local.latent_branches, local.latent_groups, local.n_heads) == (1, 1, 64)
        assert local.kv_lora_rank == cfg.head_dim
        assert local.output_scale == pytest.approx(0.5)
        assert shard.cache_elements_per_token == 1.5 * cfg.head_dim
        assert shard.slices["layers.0.attn.kv_norm"].dims == ((0, ((r, r + 1),)),)
        assert "layers.0.attn.wq_b.weight" in shard.slices  # sliced (to all heads)
        assert "layers.0.attn.wq_a.weight" not in shard.slices  # replicated
    assert make_plan(cfg, 2).shard(1).cache_elements_per_token == 2.5 * cfg.head_dim
    assert make_plan(cfg, 8).shard(5).config.n_heads == 32


@pytest.mark.parametrize("name", mlra.VARIANTS)
def test_cache_per_rank_matches_kv_accounting(name):
    cfg = decode_config(name)
    for tp in (1, 2, 4, 8):
        if tp not in allowed_degrees(cfg):
            continue
        want = kv_elements_per_device(cfg, tp)
        plan = make_plan(cfg, tp)
        assert [s.cache_elements_per_token for s in plan.shards] == [want] * tp, (name, tp)


def test_allowed_degrees_and_error_message():
    assert allowed_degrees(ModelConfig.preset("mlra_4")) == [1, 2, 4, 8, 12, 16, 24, 32, 48, 96]
    assert allowed_degrees(ModelConfig.preset("gqa")) == [1, 2, 3, 6, 12, 24]  # 6 K/V heads
    assert allowed_degrees(ModelConfig.preset("gla_2", size="tiny")) == [1, 2, 4]
    with pytest.raises(ConfigError, match=r"cannot be split 3 ways.*allowed.*1, 2, 4, 8"):
        make_plan(ModelConfig.preset("mlra_4"), 3)
    with pytest.raises(ConfigError, match="allowed tensor-parallel degrees: 1, 2, 4, 8$"):
        make_plan(tiny_config("mlra_2"), 3)


def test_load_checkpoint_tp_reads_slices_and_rejects_bad_degree(tmp_path):
    from mlra import load_checkpoint

    full = _full("gla_2").float()
    save_model(full, tmp_path / "m")
    ctx = TPContext(1, 2, torch.device("cpu"), None)
    shard = load_checkpoint(tmp_path / "m", tp=ctx)
    ref = _shards(full, 2)[1]
    for (k, v), (k2, v2) in zip(shard.state_dict().items(), ref.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2.float()), k
    assert shard.layers[0].attn.wkv_b.shape[0] == 1  # one latent head, not the full model
    with pytest.raises(ConfigError, match="cannot be split 3 ways"):
        load_checkpoint(tmp_path / "m", tp=TPContext(0, 3, torch.device("cpu"), None))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", tp=ctx)


def test_init_tp_rejects_mismatched_world_size(monkeypatch):
    from mlra.parallel import init_tp

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="needs 2 processes.*torchrun --nproc-per-node 2"):
        init_tp(2)
    assert init_tp(1).world_size == 1  # one process, no group
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="degree 4 does not match the 2 processes"):
        init_tp(4)
