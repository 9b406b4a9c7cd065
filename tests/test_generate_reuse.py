"""Decoders kept between ``mlra.generate`` calls (:mod:`mlra.reuse`): the same decoder serves a
second call and gives a fresh decoder's tokens; nothing of one call reaches the next; it is
rebuilt when the model's weights, dtype or settings change or the cache is too small; it dies
with the model; a concurrent call gets its own. With a GPU: the second call captures no graph.
The generate benchmark's CPU smoke mode."""

from __future__ import annotations

import gc
import importlib.util
import json
import threading
import weakref
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

import mlra
from mlra.cache import PagedKVCache
from mlra.cuda_graphs import GraphedDecodeStep, load_padded, pad_step_inputs
from mlra.decoding import Decoder
from mlra.generate import kept_decoder, release_decoder
from mlra.serve.engine import Engine, SamplingParams
from mlra.serve.executor import Executor

pytestmark = pytest.mark.usefixtures("one_thread")

ON_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")


def _prompts(vocab: int, lengths=(5, 9, 2), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _fresh(model, prompts, **kw) -> list[list[int]]:
    """Tokens from a decoder built for this call only (what every call did before)."""
    return mlra.generate(model, prompts, reuse=False, **kw)


def _poison(decoder: Decoder) -> None:
    for pools in decoder.cache.pools:
        for pool in pools.values():
            pool.fill_(float("nan"))


@pytest.mark.parametrize("name", ["mlra_4", "gqa", "tpa"])
def test_second_call_reuses_the_decoder_and_gives_fresh_tokens(name):
    model = tiny_model(name)
    prompts = _prompts(model.config.vocab_size)
    kw = dict(max_new_tokens=6, page_size=4)
    first = mlra.generate(model, prompts, **kw)
    dec = kept_decoder(model)
    assert dec is not None and dec.cache.sequences == []  # every sequence freed on return
    second = mlra.generate(model, prompts, **kw)
    assert kept_decoder(model) is dec
    assert first == second == _fresh(model, prompts, **kw)
    assert kept_decoder(model) is dec  # reuse=False neither used nor replaced it


def test_nothing_of_a_call_reaches_the_next():
    """Cache rows left by one call are never read by the next: poisoned with NaN between the
    calls, the next call still gives a fresh decoder's tokens (greedy and seeded sampling)."""
    model = tiny_model("mla")
    vocab = model.config.vocab_size
    mlra.generate(model, _prompts(vocab, (12, 7, 3), seed=1), max_new_tokens=9, page_size=4)
    dec = kept_decoder(model)
    for kw in (dict(), dict(temperature=0.9, top_k=20, seed=5)):
        _poison(dec)
        other = _prompts(vocab, (4, 10), seed=2)
        got = mlra.generate(model, other, max_new_tokens=7, page_size=4, **kw)
        assert kept_decoder(model) is dec
        assert got == _fresh(model, other, max_new_tokens=7, page_size=4, **kw)


def test_a_smaller_call_schedules_as_on_a_cache_of_its_own_size():
    """A kept cache larger than the call's budget: the engine admits what the budget holds
    (max_pages), not what the cache holds."""
    model = tiny_model("mlra_2")
    big = PagedKVCache.for_model(model, 64 * 4, 4)
    engine = Engine(model, reserve_full=True, executor=Executor(Decoder(model, big)),
                    max_pages=6)
    for p in _prompts(model.config.vocab_size, (3, 3, 3, 3)):
        engine.add_request(p, SamplingParams(max_tokens=5))  # 7 tokens cached: 2 pages each
    engine.step()
    assert engine.num_running == 3 and engine.num_waiting == 1
    with pytest.raises(mlra.MlraError, match="budget holds 24"):
        engine.add_request([1] * 20, SamplingParams(max_tokens=8))
    with pytest.raises(mlra.MlraError, match="max_pages"):
        Engine(model, executor=Executor(Decoder(model, big)), max_pages=65)
    # through generate: a tight budget after a large call, same decoder, fresh tokens
    prompts = _prompts(model.config.vocab_size, (3, 11, 6, 1), seed=3)
    mlra.generate(model, prompts, max_new_tokens=8, page_size=4)
    dec = kept_decoder(model)
    tight = dict(max_new_tokens=6, page_size=4, cache_tokens=28, max_batch_size=2,
                 prefill_chunk=4)
    assert mlra.generate(model, prompts, **tight) == _fresh(model, prompts, **tight)
    assert kept_decoder(model) is dec


def test_rebuilt_when_weights_dtype_settings_or_size_change():
    model = tiny_model("mlra_4")
    prompts = _prompts(model.config.vocab_size)
    kw = dict(max_new_tokens=5, page_size=4)
    before = mlra.generate(model, prompts, **kw)
    dec = kept_decoder(model)
    with torch.no_grad():  # in place: same tensors, new version counters
        w = model.embed.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
    after = mlra.generate(model, prompts, **kw)
    assert kept_decoder(model) is not dec and after == _fresh(model, prompts, **kw)
    assert after != before
    dec = kept_decoder(model)
    model.double()  # new tensors of another dtype
    assert mlra.generate(model, prompts, **kw) == _fresh(model, prompts, **kw)
    assert kept_decoder(model) is not dec and kept_decoder(model).cache.dtype == torch.float64
    dec = kept_decoder(model)
    mlra.generate(model, prompts, max_new_tokens=5, page_size=8)  # another page size
    assert kept_decoder(model) is not dec and kept_decoder(model).cache.page_size == 8
    dec = kept_decoder(model)
    mlra.generate(model, prompts, max_new_tokens=5, page_size=8, compile={"backend": "eager"})
    assert kept_decoder(model) is not dec
    mlra.generate(model, prompts, max_new_tokens=5, page_size=8)
    dec = kept_decoder(model)
    small = dec.cache.num_pages
    longer = mlra.generate(model, prompts, max_new_tokens=30, page_size=8)  # needs more pages
    grown = kept_decoder(model)
    assert grown is not dec and grown.cache.num_pages > small
    assert longer == _fresh(model, prompts, max_new_tokens=30, page_size=8)
    mlra.generate(model, prompts, max_new_tokens=5, page_size=8)  # fits the grown cache
    assert kept_decoder(model) is grown


def test_inference_mode_and_plain_calls_do_not_share_a_cache():
    """A cache made under torch.inference_mode cannot be written outside it (and the other
    way round is kept apart too): alternating calls each get a decoder of their mode."""
    model = tiny_model("mla")
    with torch.inference_mode():
        inside = mlra.generate(model, [[1, 2, 3]], max_new_tokens=4)
        dec = kept_decoder(model)
    assert mlra.generate(model, [[1, 2, 3]], max_new_tokens=4) == inside
    assert kept_decoder(model) is not dec
    with torch.inference_mode():
        assert mlra.generate(model, [[1, 2, 3]], max_new_tokens=4) == inside
        built_inside = tiny_model("mla")  # inference tensors: no version counters
        first = mlra.generate(built_inside, [[1, 2, 3]], max_new_tokens=4)
        dec = kept_decoder(built_inside)
        assert mlra.generate(built_inside, [[1, 2, 3]], max_new_tokens=4) == first == inside
        assert kept_decoder(built_inside) is dec


def test_released_explicitly_and_with_the_model():
    model = tiny_model("gla_2")
    mlra.generate(model, [[1, 2, 3]], max_new_tokens=3)
    cache = weakref.ref(kept_decoder(model).cache)
    release_decoder(model)
    assert kept_decoder(model) is None and cache() is None  # freed at once
    mlra.generate(model, [[1, 2, 3]], max_new_tokens=3)
    cache = weakref.ref(kept_decoder(model).cache)
    owner = weakref.ref(model)
    del model
    gc.collect()
    assert owner() is None and cache() is None  # the kept decoder did not keep the model


def test_a_failed_call_drops_the_decoder():
    model = tiny_model("mlra_4")
    mlra.generate(model, [[4, 5, 6]], max_new_tokens=3)
    dec = kept_decoder(model)

    def fail(i, t):
        raise KeyError("stop streaming")

    with pytest.raises(KeyError):
        mlra.generate(model, [[4, 5, 6], [7]], max_new_tokens=4, callback=fail)
    assert kept_decoder(model) is None and dec.cache.sequences == []
    assert mlra.generate(model, [[7]], max_new_tokens=4) == _fresh(model, [[7]],
                                                                    max_new_tokens=4)


def test_a_concurrent_call_uses_a_decoder_of_its_own():
    """A call made while another holds the kept decoder (here from its callback; then from
    threads) gets its own, and both give a fresh decoder's tokens."""
    model = tiny_model("mla")
    vocab = model.config.vocab_size
    outer, inner = _prompts(vocab, (6, 3), seed=4), _prompts(vocab, (8,), seed=5)
    mlra.generate(model, outer, max_new_tokens=2)
    dec = kept_decoder(model)
    nested: list = []

    def during(i, t):
        if not nested:
            nested.append(mlra.generate(model, inner, max_new_tokens=6))

    got = mlra.generate(model, outer, max_new_tokens=6, callback=during)
    assert kept_decoder(model) is dec
    assert got == _fresh(model, outer, max_new_tokens=6)
    assert nested == [_fresh(model, inner, max_new_tokens=6)]
    jobs = [_prompts(vocab, (n, 3), seed=n) for n in (2, 5, 9, 4)]
    want = [_fresh(model, p, max_new_tokens=5) for p in jobs]
    results: dict[int, list] = {}

    def run(i):
        results[i] = mlra.generate(model, jobs[i], max_new_tokens=5)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(jobs))] == want


def test_graph_inputs_are_padded_in_place_over_a_larger_batch():
    """load_padded writes what pad_step_inputs builds, whatever the buffers held (a batch of 8
    earlier, now 3 rows over 2 pages)."""
    ids = torch.tensor([[3], [7], [1]])
    table = torch.tensor([[5, 6], [2, 0], [9, 4]], dtype=torch.int32)
    lens = torch.tensor([7, 3, 8], dtype=torch.int32)
    static = (torch.randint(0, 99, (8, 1)), torch.randint(0, 99, (8, 16), dtype=torch.int32),
              torch.randint(0, 99, (8,), dtype=torch.int32))
    load_padded(static, ids, table, lens)
    for got, want in zip(static, pad_step_inputs(ids, table, lens, 8, 16), strict=True):
        assert torch.equal(got, want)
    load_padded(static, ids[:1], table[:1], lens[:1])  # the same buffers, one row
    for got, want in zip(static, pad_step_inputs(ids[:1], table[:1], lens[:1], 8, 16),
                         strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="cannot pad"):
        load_padded(static, ids, torch.zeros(3, 17, dtype=torch.int32), lens)


def test_block_tables_follow_every_page_change():
    """The host rows kept for block tables stay equal to the page lists through appends,
    rollbacks (truncate), frees, page reuse and reset."""
    cache = PagedKVCache.for_model(tiny_model("mla"), 40 * 4, 4)
    g = torch.Generator().manual_seed(0)
    live: list[int] = []

    def expect(sids):
        width = max((len(cache.pages(s)) for s in sids), default=0)
        want = torch.zeros(len(sids), max(width, 1), dtype=torch.int32)
        for i, s in enumerate(sids):
            want[i, : len(cache.pages(s))] = torch.tensor(cache.pages(s), dtype=torch.int32)
        return want

    for _ in range(300):
        op = int(torch.randint(0, 6, (1,), generator=g))
        if op == 0 or not live:
            live.append(cache.add_sequence())
        elif op in (1, 2):
            s = live[int(torch.randint(0, len(live), (1,), generator=g))]
            n = int(torch.randint(1, 9, (1,), generator=g))
            if cache.num_free_pages * 4 >= n + 4:
                cache.extend([s], [n])
        elif op == 3:
            s = live[int(torch.randint(0, len(live), (1,), generator=g))]
            cache.truncate(s, int(torch.randint(0, cache.length(s) + 1, (1,), generator=g)))
        elif op == 4:
            cache.free(live.pop(int(torch.randint(0, len(live), (1,), generator=g))))
        else:
            cache.reset()
            live.clear()
        if live:
            assert torch.equal(cache.block_table(live), expect(live))
            assert torch.equal(cache.block_table(live[:1], width=40), torch.nn.functional.pad(
                expect(live[:1]), (0, 40 - expect(live[:1]).shape[1])))


# ----------------------------------------------------------------------------- benchmark
def _bench():
    path = Path(__file__).parents[1] / "benchmarks" / "e2e_decode" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_benchmark_smoke(tmp_path):
    bench = _bench()
    assert bench.main(["--device", "cpu", "--size", "tiny", "--variants", "mlra_4",
                       "--batches", "1,2", "--prompt-len", "9", "--new-tokens", "6",
                       "--reps", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_generate.json").read_text())
    rows = result["results"]
    assert [(r["variant"], r["batch"], r["compile"]) for r in rows] == [
        ("mlra_4", 1, False), ("mlra_4", 2, False)]
    for r in rows:
        assert r["same_decoder_second_call"] and r["graphs_captured_second_call"] == 0
        assert r["tokens_identical"] and r["cuda_graphs"] is False
        assert r["cold"]["ttft_ms"] > 0 and r["warm"]["ttft_ms"] > 0
        assert r["per_token_ms"] > 0 and r["step_ms"] > 0
        assert r["ratio"] == pytest.approx(r["per_token_ms"] / r["step_ms"])
        assert r["new_bucket"]["batch"] == 2 * r["batch"] and r["new_bucket"]["first_step_ms"]
    assert "| mlra_4 | 2 |" in (tmp_path / "bench_generate.md").read_text()


# ----------------------------------------------------------------------------- GPU
@gpu
def test_second_call_captures_no_graph():
    """Batch 8 first (the cache it needs also holds batch 1), then batch 1 twice and batch 8
    again: one new graph for the new batch bucket, none on the repeated calls, same tokens."""
    model = tiny_model("mlra_4", dtype=torch.bfloat16, max_seq_len=1024).cuda()
    vocab = model.config.vocab_size
    one, eight = _prompts(vocab, (40,), seed=6), _prompts(vocab, (40,) * 8, seed=7)
    first_eight = mlra.generate(model, eight, max_new_tokens=12)
    step = kept_decoder(model).step
    assert isinstance(step, GraphedDecodeStep) and step.disabled is None
    captured = step.captures
    assert captured >= 1
    first = mlra.generate(model, one, max_new_tokens=12)  # a new batch bucket: its own graph
    assert kept_decoder(model).step is step and step.captures == captured + 1
    assert mlra.generate(model, one, max_new_tokens=12) == first
    assert mlra.generate(model, eight, max_new_tokens=12) == first_eight
    assert kept_decoder(model).step is step and step.captures == captured + 1
    assert first == _fresh(model, one, max_new_tokens=12)
    assert first_eight == _fresh(model, eight, max_new_tokens=12)
