"""Real tensor-parallel runs over gloo on CPU: logits and greedy generations of TP-N shards
equal the single-process model, every rank's paged cache holds exactly the plan's bytes, and a
failing rank ends the whole group with a clear error (no hang).

One launch per world size runs every variant (process start-up dominates the time)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist
from conftest import tiny_config

import mlra
from mlra import Transformer
from mlra.cache import PagedKVCache
from mlra.errors import ConfigError
from mlra.io import save_model
from mlra.parallel import RankFailedError, generate_parallel, launch, make_plan

VARIANTS_BY_WORLD = {
    1: ("mlra_4",),
    2: ("mlra_4", "mlra_2", "gla_2", "gqa", "mla", "mha", "mqa", "gta", "mfa", "tpa"),
    4: ("mlra_4", "mlra_2", "gla_4", "gqa", "mla"),
}
RTOL = 1e-5
PROMPTS = [[5, 17, 300, 2, 9], [44, 1, 2]]  # ragged: different lengths share the cache
NEW_TOKENS = 6
GENERATE = {"mlra_4", "mlra_2", "gla_2", "gla_4", "gqa", "mla"}  # the others: logits only


def _tp_worker(ctx, jobs):
    """Per rank: load each model's shard from disk; its logits, greedy generation (paged cache,
    absorbed decode) and cache size."""
    out = {}
    for name, directory, ids in jobs:
        model = mlra.load_checkpoint(directory, tp=ctx)
        with torch.no_grad():
            logits = model(ids).logits
        cache = PagedKVCache.for_model(model, max_tokens=64)
        out[name] = {
            "logits": logits,
            "tokens": (mlra.generate(model, PROMPTS, max_new_tokens=NEW_TOKENS)
                       if name in GENERATE else None),
            "cache_elements": cache.layout.elements_per_token,
            "cache_bytes_per_token": cache.bytes_per_token(),
            "attn_params": sum(p.numel() for p in model.layers[0].attn.parameters()),
        }
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random tiny models on disk and their single-process logits."""
    root = tmp_path_factory.mktemp("tp")
    found = {}
    names = sorted({n for names in VARIANTS_BY_WORLD.values() for n in names})
    for i, name in enumerate(names):
        torch.manual_seed(i)
        model = Transformer(tiny_config(name)).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.uniform_(0.5, 1.5)
        directory = save_model(model, root / name)
        ids = torch.randint(0, model.config.vocab_size, (2, 11))
        with torch.no_grad():
            ref = model(ids).logits
        attn = sum(p.numel() for p in model.layers[0].attn.parameters())
        tokens = (mlra.generate(model, PROMPTS, max_new_tokens=NEW_TOKENS)
                  if name in GENERATE else None)
        found[name] = (str(directory), ids, ref, attn, tokens)
    return found


_RUNS: dict[int, list] = {}


@pytest.fixture(scope="module")
def runs(models):
    def get(world: int) -> list:
        if world not in _RUNS:
            jobs = [(n, models[n][0], models[n][1]) for n in VARIANTS_BY_WORLD[world]]
            _RUNS[world] = launch(_tp_worker, world, args=(jobs,), device="cpu",
                                  timeout_s=120)
        return _RUNS[world]
    return get


@pytest.mark.parametrize(
    ("world", "name"), [(w, n) for w, names in VARIANTS_BY_WORLD.items() for n in names]
)
def test_tp_logits_equal_single_process(runs, models, world, name):
    results = runs(world)
    ref = models[name][2]
    scale = ref.abs().max()
    for rank, per_rank in enumerate(results):
        got = per_rank[name]["logits"]
        assert got.shape == ref.shape
        err = ((got - ref).abs().max() / scale).item()
        assert err <= RTOL, f"{name} TP{world} rank {rank}: relative error {err:.2e}"
        assert per_rank[name]["tokens"] == models[name][4], f"{name} TP{world} rank {rank}"


@pytest.mark.parametrize(
    ("world", "name"), [(w, n) for w, names in VARIANTS_BY_WORLD.items() for n in names]
)
def test_tp_cache_per_rank_is_the_plans(runs, world, name):
    cfg = tiny_config(name)
    plan = make_plan(cfg, world)
    for rank, per_rank in enumerate(runs(world)):
        got = per_rank[name]
        want = plan.shard(rank).cache_elements_per_token
        assert got["cache_elements"] == want
        assert got["cache_bytes_per_token"] == plan.shard(rank).cache_bytes_per_token(4)  # fp32


def test_tp_ranks_hold_only_their_share(runs, models):
    """MLRA-4 at TP 4: every rank caches one latent head + the RoPE key (48 of 144 elements at
    the tiny size), and holds less than the full attention layer."""
    results = runs(4)
    cfg = tiny_config("mlra_4")
    full_cache = cfg.kv_lora_rank + cfg.rope_dim
    for per_rank in results:
        got = per_rank["mlra_4"]
        assert got["cache_elements"] == cfg.latent_head_dim + cfg.rope_dim < full_cache
        assert got["attn_params"] < models["mlra_4"][3]
    mla = [r["mla"]["cache_elements"] for r in results]
    assert mla == [tiny_config("mla").kv_lora_rank + tiny_config("mla").rope_dim] * 4


# ------------------------------------------------------------------------------ failures
def _raise_on_rank1(ctx):
    if ctx.rank == 1:
        raise ValueError("boom on purpose")
    x = torch.ones(4)
    ctx.all_reduce(x)  # blocks: its peer never joins
    return x


def _killed_rank1(ctx):
    if ctx.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    ctx.all_reduce(torch.ones(4))


def _hung_rank1(ctx):
    if ctx.rank == 1:
        time.sleep(600)  # never reaches the collective, never exits
    ctx.all_reduce(torch.ones(4))


def _bad_degree(ctx):
    raise ConfigError("mlra_4 cannot be split 3 ways; allowed tensor-parallel degrees: 1, 2, 4")


def _sum_ranks(ctx):
    x = torch.tensor([float(ctx.rank + 1)])
    ctx.all_reduce(x)
    return x.item(), dist.get_world_size()


def test_generate_parallel_matches_generate(models):
    directory, _, _, _, tokens = models["mlra_4"]
    outs, reports = generate_parallel(directory, PROMPTS, tp=2, device="cpu",
                                      max_new_tokens=NEW_TOKENS)
    assert outs == tokens
    cfg = tiny_config("mlra_4")
    per_token = (2 * cfg.latent_head_dim + cfg.rope_dim) * cfg.n_layers * 4
    assert [r["cache_bytes_per_token"] for r in reports] == [per_token, per_token]
    cached = sum(len(p) + NEW_TOKENS - 1 for p in PROMPTS)
    assert [r["cache_bytes_used"] for r in reports] == [per_token * cached] * 2
    assert [r["rank"] for r in reports] == [0, 1]


def test_launch_returns_results_in_rank_order():
    assert launch(_sum_ranks, 2, device="cpu") == [(3.0, 2), (3.0, 2)]


def test_rank_raising_stops_the_group():
    t0 = time.monotonic()
    with pytest.raises(RankFailedError, match=r"rank 1 failed: ValueError: boom on purpose") as e:
        launch(_raise_on_rank1, 2, device="cpu", timeout_s=60)
    assert time.monotonic() - t0 < 50  # well before the 60 s collective timeout
    assert e.value.rank == 1 and "boom on purpose" in e.value.details


def test_killed_rank_stops_the_group():
    t0 = time.monotonic()
    with pytest.raises(RankFailedError, match="rank 1 was killed by SIGKILL"):
        launch(_killed_rank1, 2, device="cpu", timeout_s=60)
    assert time.monotonic() - t0 < 50


def test_hung_rank_is_caught_by_the_collective_timeout():
    t0 = time.monotonic()
    with pytest.raises(RankFailedError, match="rank 0 failed"):
        launch(_hung_rank1, 2, device="cpu", timeout_s=3)
    assert time.monotonic() - t0 < 60


def test_user_error_on_a_rank_keeps_its_class():
    with pytest.raises(ConfigError, match="allowed tensor-parallel degrees"):
        launch(_bad_degree, 1, device="cpu")
