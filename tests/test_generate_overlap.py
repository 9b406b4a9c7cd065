"""The overlapped decode of the engine (``overlap``, what ``mlra.generate`` uses on a GPU):
the same tokens and callback order as without it, in every scheduling case; the step inputs
kept between steps (block table, lengths) never leak stale values."""

from __future__ import annotations

import pytest
import torch
from conftest import poison_embeddings, tiny_model

import mlra
from mlra.cache import PagedKVCache
from mlra.decoding import GenerationError
from mlra.serve import pending as pending_mod
from mlra.serve.engine import Engine, SamplingParams
from mlra.serve.executor import Executor

LENGTHS = (3, 11, 6, 1, 9)


def _prompts(vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def _lively(name: str):
    """A tiny model whose greedy tokens change from step to step (its matrices scaled up: a
    tiny random model repeats one token), so stop tokens can fall mid-decode."""
    model = tiny_model(name)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return model


def _mid_stop(outs: list[list[int]]) -> int:
    """A token that some sequence emits after its second token and some never emits."""
    for seq in outs:
        for t in seq[2:-1]:
            if any(t not in o for o in outs):
                return t
    raise AssertionError(f"no token stops a sequence mid-decode in {outs}")


def _run(model, prompts, overlap: bool, **kw) -> tuple[list[list[int]], list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = mlra.generate(model, prompts, overlap=overlap, page_size=4,
                        callback=lambda i, t: calls.append((i, t)), **kw)
    return out, calls


@pytest.fixture()
def launch_log(monkeypatch) -> list[str]:
    """Records every overlapped launch ("launch") and host read of a pending step ("read")."""
    log: list[str] = []
    launch, read = Executor.decode_ids, pending_mod.PendingTokens.host

    def logged_launch(self, rids, ids):
        log.append("launch")
        return launch(self, rids, ids)

    def logged_read(self):
        log.append("read")
        return read(self)

    monkeypatch.setattr(Executor, "decode_ids", logged_launch)
    monkeypatch.setattr(pending_mod.PendingTokens, "host", logged_read)
    return log


SAMPLED = dict(temperature=1.0, top_p=0.9, seed=11)


@pytest.mark.parametrize("kw", [
    dict(max_new_tokens=9),
    dict(max_new_tokens=9, **SAMPLED),
    # cache-limited admission, a batch cap and chunked prefill: requests wait and join
    dict(max_new_tokens=9, cache_tokens=40, max_batch_size=2, prefill_chunk=4, **SAMPLED),
    dict(max_new_tokens=9, vocab_limit=50, **SAMPLED),
], ids=["greedy", "seeded", "limited", "vocab_limit"])
def test_overlap_gives_the_same_tokens_and_callbacks_with_stops_mid_batch(kw, launch_log):
    model = _lively("mlra_4")
    prompts = _prompts(model.config.vocab_size)
    free, _ = _run(model, prompts, overlap=False, **kw)
    # a stop token that ends some sequences in the middle of the decode, others not at all
    stops = {_mid_stop(free)}
    plain, plain_calls = _run(model, prompts, overlap=False, stop_tokens=stops, **kw)
    assert any(1 < len(p) < 9 for p in plain) and any(len(p) == 9 for p in plain)
    launch_log.clear()
    got, calls = _run(model, prompts, overlap=True, stop_tokens=stops, **kw)
    assert got == plain
    assert calls == plain_calls  # the same tokens streamed in the same order
    # it did overlap: a step launched before the previous step's tokens were read
    assert "launch" in launch_log
    assert any(a == b == "launch" for a, b in zip(launch_log[:-1], launch_log[1:], strict=True))
    assert mlra.generate(model, prompts, overlap=True, stop_tokens=stops, page_size=4,
                         **kw) == plain  # and again on the kept decoder


def test_overlap_returns_every_page_and_overshoots_only_stopped_sequences(monkeypatch):
    model = _lively("gqa")
    prompts = _prompts(model.config.vocab_size, seed=3)
    free = mlra.generate(model, prompts, max_new_tokens=7, page_size=4, overlap=False,
                         **SAMPLED)
    stop = _mid_stop(free)
    rows: dict[int, int] = {}
    launch = Executor.decode_ids

    def counted(self, rids, ids):
        for r in rids:
            rows[r] = rows.get(r, 0) + 1
        return launch(self, rids, ids)

    monkeypatch.setattr(Executor, "decode_ids", counted)
    engine = Engine(model, cache_tokens=200, page_size=4, reserve_full=True, overlap=True)
    ids = [engine.add_request(p, SamplingParams(max_tokens=7, seed=11 + i, temperature=1.0,
                                                top_p=0.9, stop_token_ids=frozenset({stop})))
           for i, p in enumerate(prompts)]
    got: dict[int, list[int]] = {i: [] for i in ids}
    reasons: dict[int, str] = {}
    while engine.has_work():
        for o in engine.step():
            got[o.request_id].extend(o.tokens)
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    for rid, f in zip(ids, free, strict=True):
        expect = f[: f.index(stop) + 1] if stop in f else f
        assert got[rid] == expect
        assert reasons[rid] == ("stop" if stop in f else "length")
        # decode steps run: one per token after the first (the prefill's); a sequence that
        # stopped mid-decode had one more launched (its token dropped), never one past
        # max_tokens (the cache holds prompt + max_tokens - 1 tokens at most)
        extra = 1 if stop in f and 1 < len(expect) < 7 else 0
        assert rows.get(rid, 0) == len(expect) - 1 + extra
    assert engine.tokens_generated == sum(len(v) for v in got.values())
    assert engine.cache.num_free_pages == engine.cache.num_pages and engine._committed == 0


def test_a_failing_overlapped_launch_falls_back_to_isolated_steps(monkeypatch):
    model = _lively("mla")
    prompts = _prompts(model.config.vocab_size, seed=5)
    want = mlra.generate(model, prompts, max_new_tokens=6, page_size=4, overlap=False)
    launch = Executor.decode_ids
    count = [0]

    def flaky(self, rids, ids):
        count[0] += 1
        if count[0] % 2 == 0:  # every second launch fails before running (a host-side error)
            raise RuntimeError("injected launch failure")
        return launch(self, rids, ids)

    monkeypatch.setattr(Executor, "decode_ids", flaky)
    assert mlra.generate(model, prompts, max_new_tokens=6, page_size=4, overlap=True) == want
    assert count[0] > 2


def test_a_failing_request_fails_alone_with_overlap(monkeypatch):
    model = _lively("mlra_4")
    prompts = _prompts(model.config.vocab_size, seed=6)[:3]
    poison = 7
    clean = [[t for t in p if t != poison] for p in prompts]
    want = mlra.generate(model, clean, max_new_tokens=5, page_size=4, overlap=False)
    poison_embeddings(monkeypatch, model, poison)
    engine = Engine(model, cache_tokens=200, page_size=4, reserve_full=True, overlap=True)
    ids = [engine.add_request(p, SamplingParams(max_tokens=5)) for p in clean]
    bad = engine.add_request([1, poison, 2], SamplingParams(max_tokens=5))
    got: dict[int, list[int]] = {}
    finished = {}
    while engine.has_work():
        for o in engine.step():
            got.setdefault(o.request_id, []).extend(o.tokens)
            if o.finished:
                finished[o.request_id] = o
    assert finished[bad].finish_reason == "error" and "injected fault" in finished[bad].error
    for i, rid in enumerate(ids):
        if poison not in want[i]:  # a request that samples the poison fails too
            assert got[rid] == want[i] and finished[rid].finish_reason == "length"


def test_logprobs_and_aborts_take_the_plain_path():
    model = _lively("mlra_2")
    prompts = _prompts(model.config.vocab_size, seed=7)[:2]

    def run(overlap: bool) -> tuple[dict, dict]:
        engine = Engine(model, cache_tokens=200, page_size=4, reserve_full=True,
                        overlap=overlap)
        a = engine.add_request(prompts[0], SamplingParams(max_tokens=6, logprobs=2))
        b = engine.add_request(prompts[1], SamplingParams(max_tokens=30))
        toks: dict[int, list[int]] = {a: [], b: []}
        lps: list = []
        reasons = {}
        for n in range(40):
            if n == 10:
                engine.abort(b)
            for o in engine.step():
                toks[o.request_id].extend(o.tokens)
                lps.extend(o.logprobs or [])
                if o.finished:
                    reasons[o.request_id] = o.finish_reason
            if not engine.has_work():
                break
        assert engine.cache.num_free_pages == engine.cache.num_pages
        return toks, reasons, lps

    plain, on = run(False), run(True)
    assert plain[0] == on[0] and plain[1] == on[1]
    assert [x.token for x in plain[2]] == [x.token for x in on[2]] == plain[0][0]
    assert on[1][1] == "abort" and on[1][0] == "length"


def test_overlap_needs_reserve_full():
    model = tiny_model("mla")
    with pytest.raises(GenerationError, match="reserve_full"):
        Engine(model, cache_tokens=64, page_size=4, overlap=True)


def test_pending_inputs_pick_the_rows_of_the_requests_still_decoded():
    reqs = [object() for _ in range(4)]
    p = pending_mod.PendingTokens(reqs, torch.tensor([10, 11, 12, 13]))
    assert p.inputs(reqs).tolist() == [[10], [11], [12], [13]]
    assert p.inputs([reqs[0], reqs[2], reqs[3]]).tolist() == [[10], [12], [13]]
    assert p.inputs([reqs[2], reqs[0]]) is None  # not in their order
    assert p.inputs([reqs[1], object()]) is None  # one of them is not pending
    assert p.host() == [10, 11, 12, 13] and p.row(reqs[2]) == 2 and p.row(object()) is None


def test_kept_block_table_and_lengths_follow_every_change():
    model = tiny_model("mla")
    cache = PagedKVCache.for_model(model, max_tokens=64, page_size=4)
    a, b = cache.add_sequence(), cache.add_sequence()

    def check(sids):
        table = cache.block_table(sids, reuse=True)
        lens = cache.seq_lens(sids, reuse=True)
        assert torch.equal(table, cache.block_table(sids))
        assert torch.equal(lens, cache.seq_lens(sids))
        return table, lens

    cache.extend([a, b], [3, 5])
    t0, _ = check([a, b])
    cache.extend([a, b], [1, 1])  # no new page: the same table object, lengths + 1
    t1, lens1 = check([a, b])
    assert t1 is t0 and lens1.tolist() == [4, 6]
    cache.extend([a, b], [1, 1])  # a crosses into its second page: a new table
    t2, _ = check([a, b])
    assert t2 is not t0 and t2.shape[1] == 2
    check([b])  # another batch
    check([a, b])
    cache.truncate(a, 2)  # a rollback: pages go back, lengths shrink
    check([a, b])
    c = cache.add_sequence()  # takes the page a gave back
    cache.extend([c], [4])
    check([a, c])
    cache.extend([a, c], [2, 0])  # uneven growth: rebuilt from the host
    check([a, c])
    cache.free(a)
    d = cache.add_sequence()
    cache.extend([d], [6])
    check([d, c])
    check([c, d])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the overlap's point is a GPU")
@pytest.mark.parametrize("name", ["mlra_4", "gqa"])
def test_overlapped_launch_never_waits_for_the_device(name, monkeypatch):
    """On a GPU (bf16, CUDA graphs) the overlapped launch -- step inputs, graph replay,
    sampling, the start of the tokens' copy -- makes no host synchronisation, and the tokens
    equal those of the plain path."""
    model = _lively(name).to("cuda", torch.bfloat16)
    prompts = _prompts(model.config.vocab_size, seed=8)
    kw = dict(max_new_tokens=24, page_size=16)
    free = mlra.generate(model, prompts, overlap=False, **kw)
    stops = {_mid_stop(free)}
    plain = mlra.generate(model, prompts, overlap=False, stop_tokens=stops, **kw)
    mlra.generate(model, prompts, overlap=True, stop_tokens=stops, **kw)  # captures shapes
    launch, sample = Executor.decode_ids, Engine._sample
    launches = [0]

    def strict(fn):
        def run(*args, **kwargs):
            old = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(old)
        return run

    def counted(self, rids, ids):
        launches[0] += 1
        return strict(launch)(self, rids, ids)

    monkeypatch.setattr(Executor, "decode_ids", counted)
    monkeypatch.setattr(Engine, "_sample", strict(sample))
    monkeypatch.setattr(pending_mod.PendingTokens, "__init__",
                        strict(pending_mod.PendingTokens.__init__))
    got = mlra.generate(model, prompts, overlap=True, stop_tokens=stops, **kw)
    assert launches[0] > 10
    assert got == plain
