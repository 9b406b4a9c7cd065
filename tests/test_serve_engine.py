"""The continuous-batching engine: requests joining and leaving between steps give the tokens
they give alone; chunked prefill interleaves with decode; a full cache makes requests wait or
preempts one (recomputed later); aborts and failures free their pages; log-probabilities equal
a direct forward."""

from __future__ import annotations

import pytest
import torch
from conftest import poison_embeddings, tiny_model

import mlra
from mlra.cache import CacheFullError
from mlra.decoding import GenerationError
from mlra.serve import Engine, SamplingParams
from mlra.serve.engine import run_to_completion

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(vocab: int, lengths=(5, 17, 9, 2, 30, 12), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _alone(model, prompt, n, **kw) -> list[int]:
    return mlra.generate(model, [prompt], max_new_tokens=n, page_size=4, **kw)[0]


@pytest.mark.parametrize("name", ["mlra_4", "gqa"])
def test_staggered_requests_with_preemption_equal_each_alone(name):
    model = tiny_model(name)
    prompts = _prompts(model.config.vocab_size)
    n = 12
    # 12 pages of 4 tokens: far less than the ~150 tokens the six requests hold together
    engine = Engine(model, cache_tokens=48, page_size=4, prefill_chunk=8)
    ids, outs = [], {}
    for p in prompts:  # a new request every two steps, while the others run
        ids.append(engine.add_request(p, SamplingParams(max_tokens=n)))
        for _ in range(2):
            for o in engine.step():
                outs.setdefault(o.request_id, []).extend(o.tokens)
    while engine.has_work():
        for o in engine.step():
            outs.setdefault(o.request_id, []).extend(o.tokens)
    got = [outs[i] for i in ids]
    assert got == [_alone(model, p, n) for p in prompts]
    assert engine.preemptions > 0  # the cache really was too small for everyone at once
    assert engine.cache.num_free_pages == engine.cache.num_pages and not engine.has_work()


def test_seeded_sampling_does_not_depend_on_the_batch():
    model = tiny_model("mla")
    prompts = _prompts(model.config.vocab_size)
    kw = dict(temperature=0.9, top_k=50, top_p=0.95)
    engine = Engine(model, cache_tokens=64, page_size=4)
    ids = [engine.add_request(p, SamplingParams(max_tokens=8, seed=3 + i, **kw))
           for i, p in enumerate(prompts)]
    got = run_to_completion(engine, ids)
    assert [got[i] for i in ids] == mlra.generate(model, prompts, max_new_tokens=8, seed=3,
                                                  page_size=4, **kw)


def test_chunked_prefill_interleaves_with_decode():
    model = tiny_model("mlra_2")
    engine = Engine(model, cache_tokens=256, page_size=4, prefill_chunk=8)
    short = engine.add_request([1, 2, 3], SamplingParams(max_tokens=20))
    engine.step()  # prefilled: its first token
    long = engine.add_request(list(range(5, 69)), SamplingParams(max_tokens=2))
    steps_with_token = 0
    for _ in range(4):  # the 64-token prompt takes 8 steps of 8 tokens...
        outs = {o.request_id: o for o in engine.step()}
        assert long not in outs  # ...still prefilling
        steps_with_token += len(outs[short].tokens)
    assert steps_with_token == 4  # ...while the running request got a token every step
    got = run_to_completion(engine, [short, long])
    assert got[long] == _alone(model, list(range(5, 69)), 2)


def test_abort_frees_pages_and_reports_abort():
    model = tiny_model("gta")
    engine = Engine(model, cache_tokens=64, page_size=4)
    a = engine.add_request([1, 2, 3, 4, 5], SamplingParams(max_tokens=30))
    b = engine.add_request([6, 7], SamplingParams(max_tokens=30))
    for _ in range(3):
        engine.step()
    assert engine.pages_used > 0
    engine.abort(a)
    engine.abort(b)
    outs = {o.request_id: o for o in engine.step()}
    assert outs[a].finish_reason == outs[b].finish_reason == "abort"
    assert engine.pages_used == 0 and not engine.has_work()


def test_waiting_request_is_admitted_when_pages_free_up():
    model = tiny_model("mla")
    engine = Engine(model, cache_tokens=16, page_size=4)  # one request at a time
    a = engine.add_request(list(range(1, 9)), SamplingParams(max_tokens=8))
    b = engine.add_request(list(range(9, 17)), SamplingParams(max_tokens=4))
    engine.step()
    assert engine.num_running == 1 and engine.num_waiting == 1
    got = run_to_completion(engine, [a, b])
    assert got[b] == _alone(model, list(range(9, 17)), 4)
    with pytest.raises(CacheFullError, match="cache_tokens"):
        engine.add_request(list(range(1, 15)), SamplingParams(max_tokens=8))


def test_a_failing_request_fails_alone(monkeypatch):
    model = tiny_model("mlra_4")
    prompts = _prompts(model.config.vocab_size)[:3]
    poison = 7
    poison_embeddings(monkeypatch, model, poison)
    engine = Engine(model, cache_tokens=128, page_size=4)
    clean = [[t for t in prompt if t != poison] for prompt in prompts]
    ids = [engine.add_request(p, SamplingParams(max_tokens=6)) for p in clean]
    bad = engine.add_request([1, poison, 2], SamplingParams(max_tokens=6))
    finished, toks = {}, {}
    while engine.has_work():
        for o in engine.step():
            toks.setdefault(o.request_id, []).extend(o.tokens)
            if o.finished:
                finished[o.request_id] = o
    assert finished[bad].finish_reason == "error" and "injected fault" in finished[bad].error
    monkeypatch.undo()  # the model computes again
    for i, p in zip(ids, clean, strict=True):
        assert finished[i].finish_reason == "length" or poison in toks[i]
        if poison not in toks[i]:
            assert toks[i] == _alone(model, p, 6)
    assert engine.pages_used == 0


def test_logprobs_equal_a_direct_forward():
    model = tiny_model("mlra_4")
    prompt = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]
    engine = Engine(model, cache_tokens=64, page_size=4, prefill_chunk=4)
    rid = engine.add_request(prompt, SamplingParams(max_tokens=3, logprobs=2, prompt_logprobs=2))
    prompt_lp, lps, toks = None, [], []
    while engine.has_work():
        for o in engine.step():
            prompt_lp = o.prompt_logprobs or prompt_lp
            lps += o.logprobs or []
            toks += o.tokens
    assert o.request_id == rid
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([prompt + toks])).logits[0].double(), -1)
    assert prompt_lp[0] is None and len(prompt_lp) == len(prompt)
    for j in range(1, len(prompt)):
        assert prompt_lp[j].token == prompt[j]
        assert prompt_lp[j].logprob == pytest.approx(ref[j - 1, prompt[j]].item(), abs=1e-4)
        assert prompt_lp[j].top[0][0] == int(ref[j - 1].argmax())
    for k, lp in enumerate(lps):
        pos = len(prompt) - 1 + k
        assert lp.token == toks[k] == int(ref[pos].argmax())  # greedy
        assert lp.logprob == pytest.approx(ref[pos, toks[k]].item(), abs=1e-4)
        assert [t for t, _ in lp.top] == ref[pos].topk(2).indices.tolist()


@pytest.mark.parametrize("prompt, params, match", [
    ([], SamplingParams(), "empty"),
    ([1, 999], SamplingParams(), "outside the vocabulary"),
    ([1] * 250, SamplingParams(max_tokens=10), "context of 256"),
    ([1], SamplingParams(temperature=-1.0), "temperature"),
    ([1], SamplingParams(max_tokens=-1), "max_tokens"),
    ([1], SamplingParams(logprobs=-2), "logprobs"),
])
def test_invalid_requests(prompt, params, match):
    engine = Engine(tiny_model("mla"), cache_tokens=64, page_size=4)
    with pytest.raises(GenerationError, match=match):
        engine.add_request(prompt, params)
    assert not engine.has_work()
