"""``mlra data prepare`` and the built-in corpus."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from mlra.data.corpus import (
    builtin_documents,
    builtin_text,
    builtin_train_shard,
    builtin_validation_shard,
)
from mlra.data.prepare import prepare, split_chunks
from mlra.data.shards import read_shard
from mlra.data.sources import resolve_data
from mlra.data.tokenizers import ByteTokenizer, load_tokenizer
from mlra.errors import DataError


def _decode(paths):
    return ByteTokenizer().decode(np.concatenate([read_shard(p) for p in paths]).tolist())


def test_split_chunks_reassemble():
    text = "".join(f"paragraph {i} " * 30 + "\n\n" for i in range(50))
    chunks = split_chunks(text, 1000)
    assert "".join(chunks) == text and len(chunks) > 5
    assert all(c.endswith("\n\n") for c in chunks[:-1])


def test_prepare_text_file_byte(tmp_path):
    text = "".join(f"Line {i}: the quick brown fox.\n\n" for i in range(3000))
    src = tmp_path / "book.txt"
    src.write_text(text)
    res = prepare([str(src)], tmp_path / "out", "byte", progress=False)
    train_text, val_text = _decode(res.train_shards), _decode(res.val_shards)
    assert train_text.startswith("<|endoftext|>Line 0:")
    assert 0.005 < res.val_tokens / (res.train_tokens + res.val_tokens) < 0.12
    # Every character of the input lands in exactly one split.
    assert len(train_text.replace("<|endoftext|>", "")) + \
        len(val_text.replace("<|endoftext|>", "")) == len(text)
    assert isinstance(load_tokenizer(tmp_path / "out"), ByteTokenizer)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["train_tokens"] == res.train_tokens
    with pytest.raises(DataError, match="--overwrite"):
        prepare([str(src)], tmp_path / "out", "byte", progress=False)


def test_prepare_jsonl_directory_and_gzip(tmp_path):
    docs = [{"text": f"document number {i} " * 20, "id": i} for i in range(300)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(json.dumps(d) for d in docs[:150]))
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(d) for d in docs[150:]))
    (tmp_path / "in" / "ignored.bin").write_bytes(b"\x00")
    res = prepare([str(tmp_path / "in")], tmp_path / "out", "byte", progress=False,
                  val_fraction=0.05)
    assert res.documents == 300
    text = _decode(res.train_shards) + _decode(res.val_shards)
    assert text.count("<|endoftext|>") == 300
    assert "document number 299" in text


def test_prepare_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([str(tmp_path / "missing.txt")], tmp_path / "o", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(DataError, match="no field 'text'"):
        prepare([str(bad)], tmp_path / "o", progress=False)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        prepare([str(bad)], tmp_path / "o", progress=False)


def test_prepare_trained_bpe(tmp_path):
    pytest.importorskip("tokenizers")
    src = tmp_path / "t.txt"
    src.write_text("".join(f"The attention layer {i % 7} reads the cache.\n\n"
                           for i in range(2000)))
    res = prepare([str(src)], tmp_path / "out", "bpe", vocab_size=300, progress=False)
    tok = load_tokenizer(tmp_path / "out")
    assert 258 < tok.vocab_size <= 300  # training stops early once no pair repeats
    ids = read_shard(res.train_shards[0], vocab_size=tok.vocab_size)
    assert res.train_tokens < 0.5 * src.stat().st_size  # merges compress the text
    assert tok.decode(ids[:40].tolist()).startswith("<|endoftext|>The attention layer 0")


def test_builtin_corpus(mlra_cache):
    docs = builtin_documents()
    assert sum(len(t.encode()) for _, t in docs) > 1_000_000
    train, val = builtin_documents("train"), builtin_documents("validation")
    assert len(train) + len(val) == len(docs) and {n for n, _ in train}.isdisjoint(
        n for n, _ in val)
    assert 0.01 < sum(len(t) for _, t in val) / sum(len(t) for _, t in docs) < 0.1
    assert " the " in builtin_text("validation")
    tok = ByteTokenizer()
    path = builtin_train_shard(tok)
    assert str(mlra_cache) in str(path)
    assert builtin_train_shard(tok) == path  # cached
    val_tokens = read_shard(builtin_validation_shard(tok), vocab_size=257)
    assert val_tokens[0] == tok.eot_id and (val_tokens == tok.eot_id).sum() == len(val)
    src = resolve_data("builtin")
    assert src.train == [path] and isinstance(src.tokenizer, ByteTokenizer)


def test_resolve_data_directory_without_tokenizer_is_gpt2(tmp_path):
    from mlra.data.shards import write_shard
    from mlra.data.tokenizers import GPT2Tokenizer

    write_shard(tmp_path / "fineweb_train_000001.bin", [1, 2, 3])
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 2, 3])
    src = resolve_data(str(tmp_path))
    assert isinstance(src.tokenizer, GPT2Tokenizer) and "GPT-2" in src.note
    assert [p.name for p in src.train] == ["fineweb_train_000001.bin"]
    assert [p.name for p in src.val] == ["fineweb_val_000000.bin"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training shards"):
        resolve_data(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(str(tmp_path / "nothing"))


def test_large_text_file_is_streamed_in_pieces(tmp_path, monkeypatch):
    import mlra.data.prepare as prep

    monkeypatch.setattr(prep, "_BLOCK_BYTES", 1000)
    text = "".join(f"Paragraph {i}: " + "words " * (i % 40) + "\n\n" for i in range(400))
    src = tmp_path / "big.txt"
    src.write_text(text)
    res = prepare([str(src)], tmp_path / "out", "byte", progress=False, val_fraction=0.0)
    assert res.documents == 1 and not res.val_shards
    assert _decode(res.train_shards) == "<|endoftext|>" + text
