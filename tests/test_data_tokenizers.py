"""Tokenizers: round trips, save/load through tokenizer.json, GPT-2 from a local file only."""

from __future__ import annotations

import base64
import json
import os

import pytest

from mlra.data.tokenizers import (
    EOT_TEXT,
    GPT2_ENV,
    BPETokenizer,
    ByteTokenizer,
    GPT2Tokenizer,
    TiktokenTokenizer,
    get_tokenizer,
    gpt2_tokenizer,
    load_tokenizer,
    pad_vocab,
)
from mlra.errors import DataError

TEXT = "Multi-head low-rank attention, naïve café — 注意力 🚀\n\n  indented  line\tend"


def test_byte_round_trip_and_eot():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert max(ids) < 256 and len(ids) == len(TEXT.encode())
    assert tok.decode(ids) == TEXT
    assert tok.decode([tok.eot_id] + ids + [tok.eot_id]) == EOT_TEXT + TEXT + EOT_TEXT
    assert tok.encode_array(TEXT).tolist() == ids
    assert (tok.vocab_size, tok.eot_id) == (257, 256)


def test_save_load_byte(tmp_path):
    ByteTokenizer().save(tmp_path)
    data = json.loads((tmp_path / "mlra_tokenizer.json").read_text())
    assert data["format"] == "mlra-tokenizer" and data["kind"] == "byte"
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "mlra_tokenizer.json"), ByteTokenizer)
    # directories written before the rename kept our format under tokenizer.json
    (tmp_path / "mlra_tokenizer.json").rename(tmp_path / "tokenizer.json")
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_load_missing_tokenizer_explains(tmp_path):
    with pytest.raises(DataError, match="mlra_tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(DataError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path)


def test_pad_vocab():
    assert pad_vocab(50257) == 50304 and pad_vocab(257) == 320 and pad_vocab(64) == 64


def test_trained_bpe_round_trip_and_reload(tmp_path):
    pytest.importorskip("tokenizers")
    corpus = [f"The quick brown fox {i} jumps over the lazy dog. " * 3 for i in range(200)]
    tok = BPETokenizer.train(corpus, vocab_size=400)
    assert tok.vocab_size == 400
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    common = tok.encode("The quick brown fox jumps over the lazy dog.")
    assert len(common) < 20  # merges were learned
    assert tok.decode(common + [tok.eot_id]) == "The quick brown fox jumps over the lazy dog." + \
        EOT_TEXT
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer)
    assert again.encode(TEXT) == ids and again.eot_id == tok.eot_id
    assert again.fingerprint() == tok.fingerprint()


def _synthetic_tiktoken(path):
    """A tiny vocabulary in the .tiktoken format: 256 bytes plus two merges."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"th"] = 256
    ranks[b"the"] = 257
    lines = [f"{base64.b64encode(k).decode()} {v}" for k, v in ranks.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tiktoken_loader_from_local_file(tmp_path):
    pytest.importorskip("tiktoken")
    tok = TiktokenTokenizer(_synthetic_tiktoken(tmp_path / "tiny.tiktoken"), name="tiny")
    assert (tok.vocab_size, tok.eot_id) == (259, 258)
    ids = tok.encode("the theme")
    assert 257 in ids
    assert tok.decode(ids) == "the theme"
    assert tok.decode(ids + [tok.eot_id]) == "the theme" + EOT_TEXT


def test_gpt2_rejects_a_file_that_is_not_gpt2(tmp_path):
    pytest.importorskip("tiktoken")
    path = _synthetic_tiktoken(tmp_path / "tiny.tiktoken")
    with pytest.raises(DataError, match="not GPT-2's vocabulary"):
        gpt2_tokenizer(path)


def test_gpt2_missing_file_tells_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(GPT2_ENV, raising=False)
    monkeypatch.setenv("MLRA_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="r50k_base.tiktoken") as info:
        gpt2_tokenizer()
    assert GPT2_ENV in str(info.value)
    monkeypatch.setenv(GPT2_ENV, str(tmp_path / "missing.tiktoken"))
    with pytest.raises(DataError, match="does not exist"):
        gpt2_tokenizer()


def test_gpt2_is_lazy_for_ready_made_shards(tmp_path, monkeypatch):
    monkeypatch.delenv(GPT2_ENV, raising=False)
    monkeypatch.setenv("MLRA_CACHE", str(tmp_path))
    tok = get_tokenizer("gpt2")  # no file needed to know the vocabulary size
    assert isinstance(tok, GPT2Tokenizer) and (tok.vocab_size, tok.eot_id) == (50257, 50256)
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), GPT2Tokenizer)
    with pytest.raises(DataError, match="GPT-2"):
        tok.encode("hello")


@pytest.mark.skipif(not os.environ.get(GPT2_ENV), reason=f"set {GPT2_ENV} to a GPT-2 vocabulary")
def test_real_gpt2_round_trip():
    pytest.importorskip("tiktoken")
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode(tok.encode(TEXT)) == TEXT
