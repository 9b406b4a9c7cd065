"""``mlra convert --format hf`` and the Hugging Face tokenizer export: the directory loads with
AutoModelForCausalLM (trust_remote_code), AutoTokenizer gives our ids, pipeline produces text."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_official_load import official_state, write_official

import mlra
from mlra.cli import main
from mlra.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    GPT2Tokenizer,
    load_tokenizer,
    save_hf_tokenizer,
)
from mlra.io import save_model

pytest.importorskip("transformers", minversion="5.24")
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

TEXT = "Hello wörld! The theme: ✓ 123  two  spaces\n\ttab, <|endoftext|> and more"


def _same_ids(ours, directory: Path, text: str = TEXT) -> None:
    hf = AutoTokenizer.from_pretrained(directory)
    ids = ours.encode(text)
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == ours.decode(ids)
    assert hf.eos_token_id == ours.eot_id


def test_byte_and_trained_bpe_tokenizers_export(tmp_path):
    _same_ids(ByteTokenizer(), save_hf_tokenizer(ByteTokenizer(), tmp_path / "b", 64).parent)
    bpe = BPETokenizer.train([TEXT * 3, "the cat sat on the mat"] * 40, vocab_size=300)
    _same_ids(bpe, save_hf_tokenizer(bpe, tmp_path / "p", 64).parent)
    # a Hugging Face tokenizer.json on its own also loads as our tokenizer
    assert load_tokenizer(tmp_path / "p").encode(TEXT) == bpe.encode(TEXT)


def test_convert_our_run_to_hf_pipeline_generates(tmp_path):
    model = tiny_model("mlra_4", init_std=0.3, vocab_size=320)
    src = tmp_path / "run"
    save_model(model, src)
    ByteTokenizer().save(src)
    (src / "mlra_tokenizer.json").rename(src / "tokenizer.json")  # made before the rename
    out = tmp_path / "hf"
    assert main(["convert", str(src), "--out", str(out), "--format", "hf"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_type"] == "mlra" and meta["eos_token_id"] == 256
    assert json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    _same_ids(ByteTokenizer(), out)

    lm = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = torch.randint(0, 320, (1, 8))
    with torch.no_grad():
        assert torch.equal(lm(ids).logits, model(ids).logits)
    prompt = "The cat"
    new = mlra.generate(model, [list(prompt.encode())], max_new_tokens=6,
                        stop_tokens=[256])[0]
    gen = pipeline("text-generation", model=str(out), trust_remote_code=True)
    text = gen(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert text == prompt + ByteTokenizer().decode([t for t in new if t != 256])
    # our own format still converts too (and the tokenizer moves to its own file name)
    ours = tmp_path / "ours"
    assert main(["convert", str(src), "--out", str(ours)]) == 0
    assert json.loads((ours / "mlra_tokenizer.json").read_text())["kind"] == "byte"


def _synthetic_gpt2(path: Path) -> Path:
    """A vocabulary the size of GPT-2's (256 bytes + 50000 merges of two printable bytes)."""
    ranks = {bytes([b]): b for b in range(256)}
    pairs = (bytes([a, b]) for a in range(32, 256) for b in range(32, 256))
    for rank, tok in zip(range(256, 50256), pairs, strict=False):
        ranks[tok] = rank
    path.write_text("\n".join(f"{base64.b64encode(k).decode()} {v}" for k, v in ranks.items()))
    return path


def test_convert_official_checkpoint_to_hf(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    monkeypatch.setenv("MLRA_GPT2_BPE", str(_synthetic_gpt2(tmp_path / "gpt2.tiktoken")))
    state, hf_cfg = official_state("gla_2")
    src = write_official(tmp_path / "official", state, hf_cfg, shards=1)
    out = tmp_path / "hf"
    assert main(["convert", str(src), "--out", str(out), "--format", "hf"]) == 0
    _same_ids(GPT2Tokenizer(), out, "the theme, The Theme!  ok")
    ref = mlra.load_checkpoint(src)
    lm = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = torch.randint(0, ref.config.vocab_size, (1, 7))
    with torch.no_grad():
        assert torch.equal(lm(ids).logits, ref(ids).logits)


def test_convert_hf_without_a_tokenizer_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "m"
    save_model(tiny_model("gqa"), src)
    assert main(["convert", str(src), "--out", str(tmp_path / "o"), "--format", "hf"]) == 2
    assert "no tokenizer file" in capsys.readouterr().err


def test_readme_hf_snippet_runs(tmp_path, monkeypatch):
    """The Python tour's Hugging Face snippet, as written, in a fresh directory."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("The Hugging Face route")
    code = re.search(r"```python\n(.*?)```", readme[start:], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "tiny-hf" / "tokenizer_config.json").is_file()
