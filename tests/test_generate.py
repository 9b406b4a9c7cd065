"""mlra.generate: batches equal single prompts, stop conditions, streaming, sampling, budgets,
errors; the ``mlra generate`` command."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_model

import mlra
from mlra.checkpoints.runs import write_checkpoint
from mlra.cli import main
from mlra.data.tokenizers import ByteTokenizer
from mlra.generate import GenerationError
from mlra.io import save_model
from mlra.sampling import filter_logits, sample_next

LENGTHS = (3, 11, 6, 1)


def _prompts(vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def _greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_batch_of_different_lengths_equals_each_prompt_alone(variant):
    model = tiny_model(variant)
    prompts = _prompts(model.config.vocab_size)
    batch = mlra.generate(model, prompts, max_new_tokens=5, page_size=4)
    alone = [mlra.generate(model, [p], max_new_tokens=5, page_size=4)[0] for p in prompts]
    assert batch == alone
    assert batch[1] == _greedy_reference(model, prompts[1], 5)
    assert [len(b) for b in batch] == [5] * len(prompts)


@pytest.mark.parametrize("name", ["mlra_4", "gqa", "tpa"])
def test_small_budget_and_batch_cap_give_the_same_tokens(name):
    model = tiny_model(name)
    prompts = _prompts(model.config.vocab_size, seed=2)
    full = mlra.generate(model, prompts, max_new_tokens=6, page_size=4)
    # room for about two sequences at a time: the others wait for freed pages
    tight = mlra.generate(model, prompts, max_new_tokens=6, page_size=4, cache_tokens=28,
                          max_batch_size=2, prefill_chunk=4)
    assert tight == full
    with pytest.raises(mlra.MlraError, match="budget"):
        mlra.generate(model, prompts, max_new_tokens=6, page_size=4, cache_tokens=8)


def test_stop_tokens_per_sequence_and_streaming():
    model = tiny_model("mla")
    prompts = _prompts(model.config.vocab_size, seed=4)
    free = mlra.generate(model, prompts, max_new_tokens=8, page_size=4)
    stop = free[0][2]
    expected = [f[: f.index(stop) + 1] if stop in f else f for f in free]
    streamed: dict[int, list[int]] = {}
    got = mlra.generate(model, prompts, max_new_tokens=8, page_size=4, stop_tokens=[stop],
                        callback=lambda i, t: streamed.setdefault(i, []).append(t))
    assert got == expected and len(got[0]) <= 3
    assert streamed == dict(enumerate(got))
    assert any(len(g) == 8 for g in got)  # the others continued


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = tiny_model("mlra_2")
    prompts = _prompts(model.config.vocab_size, seed=5)
    greedy = mlra.generate(model, prompts, max_new_tokens=4)
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.95)
    a = mlra.generate(model, prompts, seed=7, **kw)
    assert a == mlra.generate(model, prompts, seed=7, **kw)
    assert a != mlra.generate(model, prompts, seed=8, **kw)
    # prompt i's draws come from its own generator: the batch does not change them
    assert a[:2] == mlra.generate(model, prompts[:2], seed=7, **kw)
    assert mlra.generate(model, prompts, max_new_tokens=4, temperature=0.7, top_k=1,
                         seed=0) == greedy
    assert mlra.generate(model, prompts, max_new_tokens=4, temperature=2.0, top_p=1e-9,
                         seed=0) == greedy


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.6)) == [True, True, False, False]
    assert keep(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert keep(filter_logits(shuffled, top_p=0.6)) == [False, True, False, True]
    g = [torch.Generator().manual_seed(0)]
    draws = {int(sample_next(logits, 1.0, top_k=2, generators=g)) for _ in range(50)}
    assert draws == {0, 1}


def test_vocab_limit_keeps_tokens_inside_a_smaller_tokenizer():
    model = tiny_model("gqa")
    out = mlra.generate(model, [[1, 2, 3]], max_new_tokens=20, temperature=5.0, seed=0,
                        vocab_limit=10)
    assert all(t < 10 for t in out[0])


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, None, None), (1.0, None, None),
                                                       (0.8, 20, None), (1.5, None, 0.9)])
def test_sample_next_vocab_limit_equals_masking_the_logits(temperature, top_k, top_p):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[:, 40:] += 10.0  # the likeliest ids lie beyond the limit
    masked = logits.clone()
    masked[:, 30:] = float("-inf")
    before = logits.clone()

    def draws(x, **kw):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        return [sample_next(x, temperature, top_k, top_p, gens, **kw).tolist() for _ in range(8)]

    got = draws(logits, vocab_limit=30)
    assert got == draws(masked)  # same ids, same random stream step after step
    assert max(max(row) for row in got) < 30
    assert torch.equal(logits, before)  # the caller's logits are not modified


@pytest.mark.parametrize("prompts, kwargs, match", [
    ([[1, 2], []], {}, "prompt 1 is empty"),
    ([[1, 512]], {}, "outside the vocabulary"),
    ([[1, -1]], {}, "outside the vocabulary"),
    ([[1] * 250], {"max_new_tokens": 7}, "context of 256"),
    ([1, 2, 3], {}, "wrap a single prompt"),
    ([[1]], {"temperature": -1.0}, "temperature"),
    ([[1]], {"top_p": 0.0}, "top_p"),
    ([[1]], {"max_new_tokens": -1}, "max_new_tokens"),
    ([[1, True]], {}, "not an integer token id"),
    ([[1, np.bool_(True)]], {}, "not an integer token id"),
    ([[1, np.float64(2.0)]], {}, "not an integer token id"),
    (np.array([1, 2, 3]), {}, r"must be \[batch, time\]"),
    ([np.int64(1), np.int64(2)], {}, "wrap a single prompt"),
])
def test_invalid_requests_are_clear_errors(prompts, kwargs, match):
    model = tiny_model("mla")
    with pytest.raises(GenerationError, match=match):
        mlra.generate(model, prompts, **kwargs)


def test_zero_new_tokens_and_tensor_prompts():
    model = tiny_model("gta")
    assert mlra.generate(model, [[1, 2]], max_new_tokens=0) == [[]]
    ids = torch.tensor([[4, 5, 6], [7, 8, 9]])
    assert mlra.generate(model, ids, max_new_tokens=2) == mlra.generate(
        model, ids.tolist(), max_new_tokens=2)


def test_numpy_prompts_give_the_same_tokens_as_lists():
    model = tiny_model("mlra_2")
    lists = [[4, 5, 6], [7, 8, 9]]
    want = mlra.generate(model, lists, max_new_tokens=3)
    arr = np.array(lists, dtype=np.int64)
    assert mlra.generate(model, arr, max_new_tokens=3) == want
    assert mlra.generate(model, arr.astype(np.uint16), max_new_tokens=3) == want
    assert mlra.generate(model, list(arr), max_new_tokens=3) == want  # 1-D arrays
    scalars = [[np.int64(t) for t in lists[0]], [np.int32(t) for t in lists[1]]]
    assert mlra.generate(model, scalars, max_new_tokens=3) == want


# ----------------------------------------------------------------------------- CLI
@pytest.fixture()
def byte_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = mlra.Transformer(tiny_config("mlra_4", vocab_size=320)).eval()
    save_model(model, tmp_path / "model")
    ByteTokenizer().save(tmp_path / "model")
    return model, tmp_path / "model"


def test_cli_generate_json_matches_library(byte_checkpoint, capsys):
    model, path = byte_checkpoint
    tok = ByteTokenizer()
    assert main(["generate", "--checkpoint", str(path), "--prompt", "Hello", "--prompt",
                 "a longer prompt", "--max-new-tokens", "6", "--json", "--ignore-eos"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = mlra.generate(model, [tok.encode("Hello"), tok.encode("a longer prompt")],
                             max_new_tokens=6, vocab_limit=257)
    assert [r["tokens"] for r in out["results"]] == expected
    assert out["results"][0]["text"] == tok.decode(expected[0])
    assert out["results"][0]["prompt_ids"] == tok.encode("Hello")


def test_cli_generate_streams_one_prompt_from_a_training_run(byte_checkpoint, tmp_path, capsys):
    model, _ = byte_checkpoint
    run = tmp_path / "run"
    write_checkpoint(run, 10, lambda d: save_model(model, d), ByteTokenizer(), {"step": 10}, {})
    assert main(["generate", "--checkpoint", str(run), "--prompt", "Hi", "--max-new-tokens",
                 "5", "--ignore-eos"]) == 0
    expected = mlra.generate(model, [ByteTokenizer().encode("Hi")], max_new_tokens=5,
                             vocab_limit=257)[0]
    assert capsys.readouterr().out == ByteTokenizer().decode(expected) + "\n"


def test_cli_text_stream_prints_the_whole_decode_from_bounded_windows(capsys):
    """The streamed pieces add up to the decode of all tokens (multi-byte characters split
    across tokens, invalid bytes, a stop token skipped), and each token decodes a window of a
    few tokens, not the whole text."""
    stream_mod = importlib.import_module("mlra.commands.generate")
    tok = ByteTokenizer()
    text = "h\u00e9llo \u20ac\U0001f600 w\u00f6rld" * 20
    ids = tok.encode(text) + [0xE2, 0x41, 0xF0, 0x9F]  # an invalid run and an unfinished one
    windows: list[int] = []

    def decode(tokens):
        windows.append(len(tokens))
        return tok.decode(tokens)

    stream = stream_mod._TextStream(decode, [tok.eot_id])
    for t in ids[:30] + [tok.eot_id] + ids[30:]:
        stream(0, t)
    stream.close()
    assert capsys.readouterr().out == tok.decode(ids) + "\n"
    assert max(windows) <= 8


def test_cli_generate_token_ids(byte_checkpoint, capsys):
    model, path = byte_checkpoint
    assert main(["generate", "--checkpoint", str(path), "--ids", "1,2,3", "--max-new-tokens",
                 "4"]) == 0
    expected = mlra.generate(model, [[1, 2, 3]], max_new_tokens=4)[0]
    assert capsys.readouterr().out.split() == [str(t) for t in expected]


@pytest.mark.parametrize("flags, compile, graphs", [
    ([], False, False), (["--compile", "--no-cuda-graphs"], True, False)])
def test_cli_generate_passes_the_decode_options(byte_checkpoint, capsys, monkeypatch, flags,
                                                 compile, graphs):
    """--compile reaches generate; on a CPU CUDA graphs are off whatever the flags."""
    gen = importlib.import_module("mlra.generate")  # the module (mlra.generate is the function)
    seen, real = {}, gen.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **dict(kwargs, compile=False))  # compiling would only be slow here

    monkeypatch.setattr(gen, "generate", spy)
    _, path = byte_checkpoint
    assert main(["generate", "--checkpoint", str(path), "--ids", "1,2", "--max-new-tokens", "2",
                 "--device", "cpu", *flags]) == 0
    assert (seen["compile"], seen["cuda_graphs"]) == (compile, graphs)
    assert len(capsys.readouterr().out.split()) == 2


@pytest.mark.parametrize("extra, match", [
    (["--prompt", ""], "empty"),
    (["--ids", "1,400"], "outside the vocabulary"),
    (["--prompt", "x" * 250, "--max-new-tokens", "10"], "context of 256"),
    ([], "at least one --prompt"),
    (["--prompt", "x", "--device", "foo"], "'foo' is not a valid torch device"),
    (["--prompt", "x", "--device", "cuda:99"], "cuda:99"),
])
def test_cli_generate_errors_exit_2(byte_checkpoint, capsys, extra, match):
    _, path = byte_checkpoint
    assert main(["generate", "--checkpoint", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_cli_generate_missing_checkpoint(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
