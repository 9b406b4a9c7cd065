"""CUDA-graph decoding (:mod:`mlra.cuda_graphs`).

On every machine: the padding that lets one graph serve several shapes (padded batch rows and
block-table columns change neither the real rows' logits nor the cache), the bucket sizes and
the errors. With a GPU: graph replay gives the eager step's logits and the same greedy tokens
through continuous batching, growing block tables and ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from mlra.cache import PagedKVCache
from mlra.cuda_graphs import GraphedDecodeStep, bucket, pad_step_inputs
from mlra.decoding import Decoder, DecodeStep, GenerationError
from mlra.generate import generate

ON_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")


def test_bucket_is_the_next_power_of_two():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 16, 128]
    assert bucket(3, minimum=16) == 16 and bucket(17, minimum=16) == 32


def _three_sequences(name: str, page_size: int = 4):
    """A model, its cache and a decoder holding three sequences of different lengths."""
    model = tiny_model(name)
    cache = PagedKVCache.for_model(model, 64 * page_size, page_size, fill_value=float("nan"))
    dec = Decoder(model, cache)
    sids = [dec.add_sequence() for _ in range(3)]
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g) for n in (5, 11, 2)]
    dec.prefill(sids, prompts)
    return model, cache, dec, sids


@pytest.mark.parametrize("name", ["mlra_4", "mla", "gqa", "tpa"])
def test_padded_rows_and_pages_change_nothing(name):
    """Rows padded with copies of row 0 and tables padded with page 0 give the real rows'
    logits, and the cache ends as the unpadded step leaves it (fp32; the tolerance covers a
    matrix product of 8 rows summing in another order than one of 3)."""
    model, cache, dec, sids = _three_sequences(name)
    tokens = torch.tensor([[3], [7], [1]])
    cache.extend(sids, [1, 1, 1])
    table, lens = cache.block_table(sids), cache.seq_lens(sids)
    step = DecodeStep(model, cache)
    before = [{k: v.clone() for k, v in pools.items()} for pools in cache.pools]
    plain = step(tokens, table, lens)
    after = [{k: v.clone() for k, v in pools.items()} for pools in cache.pools]
    for pools, saved in zip(cache.pools, before, strict=True):  # undo the write
        for k, v in saved.items():
            pools[k].copy_(v)
    ids, ptable, plens = pad_step_inputs(tokens, table, lens, batch=8, width=table.shape[1] + 5)
    assert ptable.shape == (8, table.shape[1] + 5) and (ptable[:3, table.shape[1]:] == 0).all()
    assert (ids[3:] == tokens[0]).all() and (plens[3:] == lens[0]).all()
    padded = step(ids, ptable, plens)
    torch.testing.assert_close(padded[:3], plain, rtol=1e-5, atol=1e-6)
    for pools, ref in zip(cache.pools, after, strict=True):
        for k, v in ref.items():
            torch.testing.assert_close(pools[k], v, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_padding_down_is_refused():
    ids, table, lens = torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 8), torch.ones(4)
    with pytest.raises(ValueError, match="cannot pad"):
        pad_step_inputs(ids, table, lens, batch=2, width=8)


def test_cuda_graphs_on_cpu_is_a_clear_error():
    model = tiny_model("mlra_4")
    cache = PagedKVCache.for_model(model, 64, 4)
    with pytest.raises(ValueError, match="CUDA device"):
        Decoder(model, cache, cuda_graphs=True)
    with pytest.raises(GenerationError, match="CUDA device"):
        generate(model, [[1, 2]], max_new_tokens=2, cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedDecodeStep(DecodeStep(model, cache))(
            torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.int32),
            torch.ones(1, dtype=torch.int32))


def test_generate_defaults_to_eager_on_cpu():
    model = tiny_model("mlra_4")
    assert generate(model, [[1, 2, 3]], max_new_tokens=3) == \
        generate(model, [[1, 2, 3]], max_new_tokens=3, cuda_graphs=False)


# ----------------------------------------------------------------------------- GPU
def _gpu_model(name: str, dtype=torch.bfloat16):
    return tiny_model(name, dtype=dtype, max_seq_len=1024).cuda()


def _twin_decoders(model, prompts, page: int, steps: list):
    """Decoders over identical caches holding ``prompts``, one per step implementation."""
    out = []
    for make in steps:
        cache = PagedKVCache.for_model(model, len(prompts) * 400, page)
        dec = Decoder(model, cache)
        dec.step = make(model, cache)
        sids = [dec.add_sequence() for _ in prompts]
        dec.prefill(sids, prompts)
        out.append((dec, sids))
    return out


def _prompts(vocab: int, lengths, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


@gpu
@pytest.mark.parametrize("name", ["mlra_4", "mla", "gla_2", "gqa", "tpa"])
def test_replayed_steps_follow_eager_steps(name):
    """40 steps of three sequences whose tables grow past a width bucket: replayed logits stay
    within bf16 tolerance of the plain eager step (which sees unpadded shapes), and the steps
    after the first of each shape are replays."""
    model = _gpu_model(name)
    prompts = _prompts(model.config.vocab_size, (30, 250, 7))
    (eager, e_ids), (graphed, g_ids) = _twin_decoders(
        model, prompts, 16, [DecodeStep, lambda m, c: GraphedDecodeStep(DecodeStep(m, c))])
    tokens = torch.tensor([1, 2, 3], device="cuda")
    for _ in range(40):
        want = eager.decode(e_ids, tokens)
        got = graphed.decode(g_ids, tokens)
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
        tokens = want[:, -1].argmax(-1)
    step = graphed.step
    assert step.disabled is None
    assert sorted(step.graphs) == [(4, 1, 16), (4, 1, 32)]  # 251 tokens: 16 pages, 290: 19


@gpu
def test_replay_is_the_eager_step_of_the_same_shapes_through_continuous_batching():
    """Batches shrinking 3 -> 2 -> 1 and growing back, ragged lengths, greedy feedback: a
    replayed step gives exactly what the same padded step gives run eagerly (max_graphs=0)."""
    model = _gpu_model("mlra_4")
    prompts = _prompts(model.config.vocab_size, (5, 70, 33, 12), seed=3)
    (ref, r_ids), (graphed, g_ids) = _twin_decoders(model, prompts, 16, [
        lambda m, c: GraphedDecodeStep(DecodeStep(m, c), max_graphs=0),
        lambda m, c: GraphedDecodeStep(DecodeStep(m, c))])
    schedule = [[0, 1, 2]] * 6 + [[1, 2]] * 6 + [[2]] * 6 + [[0, 1, 2, 3]] * 6 + [[3, 0]] * 6
    last = {i: 1 for i in range(4)}
    for rows in schedule:
        tokens = torch.tensor([last[i] for i in rows], device="cuda")
        want = ref.decode([r_ids[i] for i in rows], tokens)
        got = graphed.decode([g_ids[i] for i in rows], tokens)
        assert torch.equal(got, want)
        for i, t in zip(rows, want[:, -1].argmax(-1).tolist(), strict=True):
            last[i] = t
    # batch buckets 4 (3 rows), 2, 1, 4 again (4 rows), 2 again; tables stay under 16 pages
    assert ref.step.graphs == {} and sorted(graphed.step.graphs) == [(1, 1, 16), (2, 1, 16),
                                                                      (4, 1, 16)]


@gpu
def test_compiled_replayed_steps_follow_eager_steps():
    model = _gpu_model("mlra_4")
    prompts = _prompts(model.config.vocab_size, (9, 21))
    (eager, e_ids), (fast, f_ids) = _twin_decoders(model, prompts, 16, [
        DecodeStep, lambda m, c: GraphedDecodeStep(DecodeStep(m, c, compile=True))])
    tokens = torch.tensor([4, 5], device="cuda")
    for _ in range(8):
        want = eager.decode(e_ids, tokens)
        torch.testing.assert_close(fast.decode(f_ids, tokens).float(), want.float(),
                                   rtol=2e-2, atol=2e-2)
        tokens = want[:, -1].argmax(-1)
    assert len(fast.step.graphs) == 1 and fast.step.disabled is None


@gpu
def test_generate_uses_graphs_on_the_triton_path_only(monkeypatch):
    """The default: graphs for a bf16 model on the GPU, eager for fp32 (the reference kernels
    synchronise with the host); explicit cuda_graphs=True on fp32 warns and decodes eagerly."""
    calls = []
    real = GraphedDecodeStep.__call__
    monkeypatch.setattr(GraphedDecodeStep, "__call__",
                        lambda self, *a: calls.append(1) or real(self, *a))
    prompts = [[5, 6, 7], [8, 9]]
    out = generate(_gpu_model("mlra_4"), prompts, max_new_tokens=6)
    assert [len(o) for o in out] == [6, 6] and len(calls) == 5  # the first token is prefill's
    calls.clear()
    fp32 = _gpu_model("mlra_4", torch.float32)
    eager = generate(fp32, prompts, max_new_tokens=6)
    assert calls == []
    with pytest.warns(RuntimeWarning, match="capture failed"):
        assert generate(fp32, prompts, max_new_tokens=6, cuda_graphs=True) == eager
    # the refused capture left the device's random generator usable
    assert torch.randn(4, device="cuda").isfinite().all()
    assert generate(fp32, prompts, max_new_tokens=3, temperature=1.0, seed=0) == \
        generate(fp32, prompts, max_new_tokens=3, temperature=1.0, seed=0)
