"""A twelfth attention family, written in this file alone and registered: it trains with the
library's trainer, decodes through the paged cache (prefill + decode step equal the full
forward), appears in the KV table, and shards over tensor-parallel ranks (gloo) with the same
logits and cache per rank as the plan -- without any change to the library.

The toy family is "tied NoPE MQA": K/V heads whose key is also the value, no positional
encoding in attention (so the cache holds ``n_kv_heads * head_dim`` per token, one pool
``kv`` that is neither K nor V alone: the paged path forms K and V from it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import mlra
from mlra.attention import (
    AttentionFamily,
    AttentionShard,
    CacheLayout,
    KVAttention,
    register,
)
from mlra.attention.standard import head_split, heads_text
from mlra.cache import PagedKVCache
from mlra.decoding import Decoder
from mlra.io import save_model
from mlra.kv_accounting import kv_rows
from mlra.parallel import launch, make_plan
from mlra.slicing import rows
from mlra.train.config import TrainConfig
from mlra.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


class TiedNoPEAttention(KVAttention):
    """Query heads over ``n_kv_heads`` shared heads whose key is their value; no RoPE."""

    def __init__(self, cfg: mlra.ModelConfig) -> None:
        super().__init__(cfg)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.w_kv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)

    def query(self, x, rope):
        B, T, _ = x.shape
        return self.wq(x).view(B, T, self.cfg.n_heads, self.cfg.head_dim)

    def kv_state(self, x, rope):
        B, T, _ = x.shape
        return {"kv": self.w_kv(x).view(B, T, self.cfg.n_kv_heads, self.cfg.head_dim)}

    def expand(self, state):
        return state["kv"], state["kv"]


class TiedNoPEFamily(AttentionFamily):
    name = "toy_tied_nope"
    module = TiedNoPEAttention
    required = ("n_kv_heads",)

    def validate(self, cfg):
        if cfg.n_heads % cfg.n_kv_heads:
            raise mlra.ConfigError("n_heads must be divisible by n_kv_heads")

    def param_count(self, cfg):
        return cfg.d_model * (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim

    def cache_layout(self, cfg):
        return CacheLayout((("kv", (cfg.n_kv_heads, cfg.head_dim)),))

    def decode_flops(self, cfg):
        return 4 * cfg.n_heads * cfg.head_dim

    def tp_shard(self, cfg, tp, rank):  # query heads split, the shared K/V heads replicated
        dh = cfg.head_dim
        h0, Hl, over, slices = head_split(cfg, tp, rank)
        slices["wq.weight"] = rows(0, h0 * dh, (h0 + Hl) * dh)
        return AttentionShard(over, slices, heads_text(h0, Hl, cfg.n_heads), "heads split")


register(TiedNoPEFamily())  # at import: tensor-parallel worker processes import this module


def toy_config(**overrides) -> mlra.ModelConfig:
    base = dict(family="toy_tied_nope", vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                head_dim=16, n_kv_heads=1, intermediate_size=128, max_seq_len=128,
                zero_init_output=False)
    return mlra.ModelConfig(**{**base, **overrides})


def toy_model(seed: int = 0) -> mlra.Transformer:
    torch.manual_seed(seed)
    return mlra.Transformer(toy_config()).eval()


def test_config_validation_and_parameter_count_come_from_the_family():
    cfg = toy_config()
    assert cfg.num_params() == mlra.Transformer(cfg).num_params()
    with pytest.raises(mlra.ConfigError, match="divisible by n_kv_heads"):
        toy_config(n_kv_heads=3)
    with pytest.raises(mlra.ConfigError, match="n_kv_heads must be a positive integer"):
        toy_config(n_kv_heads=0)


def test_toy_family_trains_with_the_library_trainer(tmp_path, mlra_cache):
    cfg = TrainConfig(model="mqa", size="tiny", data="builtin", out=str(tmp_path / "run"),
                      steps=24, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=3, device="cpu",
                      eval_interval=12, val_tokens=1024, log_interval=1, progress=False,
                      model_overrides={"family": "toy_tied_nope", "n_layers": 2})
    result = train(cfg, log=lambda m: None)
    assert result.model_config.family == "toy_tied_nope"
    curve = [loss for _, loss in result.val_curve]
    assert curve[-1] < curve[0] - 0.5, curve
    reloaded = mlra.load_checkpoint(tmp_path / "run")
    assert isinstance(reloaded.layers[0].attn, TiedNoPEAttention)


def test_toy_family_paged_decode_equals_the_full_forward():
    model = toy_model()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits[0]
    cache = PagedKVCache.for_model(model, max_tokens=64, page_size=4, fill_value=float("nan"))
    assert cache.layout.elements_per_token == 16
    dec = Decoder(model, cache)
    sid = dec.add_sequence()
    got = [dec.prefill([sid], [ids[0, :7].tolist()])[0]]
    for t in range(7, 12):
        got.append(dec.decode([sid], ids[:, t])[0, 0])
    torch.testing.assert_close(torch.stack(got), ref[6:], rtol=1e-5, atol=1e-5)
    assert mlra.generate(model, [[1, 2, 3]], max_new_tokens=4) == \
        mlra.generate(model, [[1, 2, 3]], max_new_tokens=4)


def test_toy_family_in_the_kv_table():
    by_tp = {r.tp: r for r in kv_rows({"toy": toy_config()}, 16, (1, 2, 4))}
    assert by_tp[1].elements_per_token_total == 16
    # the shared K/V head is replicated under TP: every device holds it, for fewer query heads
    assert [by_tp[t].elements_per_token_per_device for t in (1, 2, 4)] == [16, 16, 16]
    assert by_tp[1].arithmetic_intensity == pytest.approx(4 * 4 * 16 / 32)
    assert by_tp[4].arithmetic_intensity == pytest.approx(4 * 1 * 16 / 32)


def _tp_worker(ctx, directory, ids):
    model = mlra.load_checkpoint(directory, tp=ctx)
    with torch.no_grad():
        logits = model(ids).logits
    cache = PagedKVCache.for_model(model, max_tokens=32)
    return {"logits": logits, "cache": cache.layout.elements_per_token,
            "heads": model.config.n_heads,
            "tokens": mlra.generate(model, [[5, 6, 7], [9]], max_new_tokens=4)}


def test_toy_family_shards_over_tensor_parallel_ranks(tmp_path):
    model = toy_model(seed=3)
    directory = str(save_model(model, Path(tmp_path) / "toy"))
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    want_tokens = mlra.generate(model, [[5, 6, 7], [9]], max_new_tokens=4)
    plan = make_plan(model.config, 2)
    assert plan.shard(1).description.startswith("query heads 2-3 of 4")
    results = launch(_tp_worker, 2, args=(directory, ids), device="cpu", timeout_s=120)
    for rank, got in enumerate(results):
        torch.testing.assert_close(got["logits"], ref, rtol=1e-5, atol=1e-5)
        assert got["cache"] == plan.shard(rank).cache_elements_per_token == 16
        assert got["heads"] == 2
        assert got["tokens"] == want_tokens
