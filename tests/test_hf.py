"""transformers integration: MlraConfig / MlraForCausalLM, save/load through the Auto classes,
and transformers' own ``generate`` over the compact MlraCache, checked against ``mlra.generate``
and an uncached full-forward loop."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

import mlra
from mlra import ModelConfig

transformers = pytest.importorskip("transformers", minversion="5.24")
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    GenerationConfig,
)
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from mlra.hf import MlraCache, MlraConfig, MlraForCausalLM  # noqa: E402

ABLATIONS = [("mlra_4", dict(output_gate=True)), ("mla", dict(latent_scaling=False)),
             ("gla_2", dict(zero_init_output=True))]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _lm(name: str = "mlra_4", **overrides) -> tuple[mlra.Transformer, MlraForCausalLM]:
    """A tiny model with a wide init (varied greedy tokens) and its transformers wrapper."""
    overrides.setdefault("init_std", 0.3)
    model = tiny_model(name, **overrides)
    return model, MlraForCausalLM.from_model(model, eos_token_id=None, pad_token_id=0)


def _left_padded(rows: list[torch.Tensor], pad: int = 0):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = r, 1
    return ids, mask


def _uncached_greedy(model: mlra.Transformer, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


# ----------------------------------------------------------------------------- config, io
def test_config_holds_every_model_field_and_hf_aliases():
    cfg = ModelConfig.preset("mlra_2", "tiny", output_gate=True)
    hf = MlraConfig.from_model_config(cfg)
    assert hf.model_type == "mlra"
    for f in dataclasses.fields(ModelConfig):
        assert getattr(hf, f.name) == getattr(cfg, f.name), f.name
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads,
            hf.max_position_embeddings) == (cfg.d_model, cfg.n_layers, cfg.n_heads,
                                            cfg.max_seq_len)
    assert hf.to_model_config() == cfg
    assert isinstance(AutoConfig.for_model("mlra", **cfg.to_dict()), MlraConfig)
    with pytest.raises(mlra.ConfigError, match="latent_groups"):
        MlraConfig.from_model_config(cfg).__class__(**{**cfg.to_dict(), "latent_groups": 3})


@pytest.mark.parametrize("name,overrides", [(v, {}) for v in mlra.VARIANTS] + ABLATIONS)
def test_save_pretrained_from_pretrained_identical_logits(tmp_path, name, overrides):
    model, lm = _lm(name, **overrides)
    lm.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model_type"] == "mlra" and meta["auto_map"]["AutoModelForCausalLM"]
    assert (tmp_path / "modeling_mlra.py").is_file()
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(back, MlraForCausalLM)
    assert back.config.to_model_config() == model.config
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    assert torch.equal(back(ids).logits, model(ids).logits)


def test_dtype_device_map_low_cpu_mem(tmp_path):
    model, lm = _lm("gla_2")
    lm.save_pretrained(tmp_path)
    ids = torch.randint(0, 512, (1, 6))
    bf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}
    ref = copy.deepcopy(model).to(torch.bfloat16)(ids).logits
    assert torch.equal(bf(ids).logits, ref)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto",
                                                low_cpu_mem_usage=True)
    assert {p.device.type for p in auto.parameters()} == {"cpu"}
    assert torch.equal(auto(ids).logits, model(ids).logits)


def test_trust_remote_code_without_importing_mlra_hf(tmp_path):
    """A fresh interpreter that never imports mlra.hf: the directory's auto_map modules load the
    classes from the installed package."""
    model, lm = _lm("mla")
    lm.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 512, (1, 5))
    torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "ref.pt")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r}, "
        "trust_remote_code=True)\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        "assert 'mlra.hf' not in sys.modules or type(m).__name__ == 'MlraForCausalLM'\n"
        "assert torch.equal(m(ref['ids']).logits, ref['logits'])\n"
        "print(type(m).__name__)\n"
    )
    env_home = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env_home}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("MlraForCausalLM")


# ----------------------------------------------------------------------------- forward
def test_padding_on_either_side_and_loss(variant):
    model, lm = _lm(variant)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 512, (n,), generator=g) for n in (9, 4, 6)]
    ids, mask = _left_padded(rows)
    out = lm(ids, attention_mask=mask, labels=ids)
    targets, logit_rows = [], []
    for i, r in enumerate(rows):
        alone = model(r[None]).logits[0]
        got = out.logits[i][mask[i].bool()]
        assert ((got - alone).abs().max() / alone.abs().max()).item() <= 1e-5
        logit_rows.append(alone[:-1])
        targets.append(r[1:])
    ref = F.cross_entropy(torch.cat(logit_rows), torch.cat(targets))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


def test_cached_forward_matches_full_forward(variant):
    """Prefill 5 tokens, then 1 and 3 more through the cache: the logits of the full forward."""
    model, lm = _lm(variant)
    ids = torch.randint(0, 512, (2, 9))
    full = model(ids).logits
    cache = MlraCache(model.config.n_layers)
    parts = [lm(ids[:, a:b], cache=cache).logits for a, b in ((0, 5), (5, 6), (6, 9))]
    got = torch.cat(parts, dim=1)
    assert cache.get_seq_length() == 9
    assert ((got - full).abs().max() / full.abs().max()).item() <= 5e-5


def test_unsupported_forward_options_raise():
    _, lm = _lm("gqa")
    ids = torch.randint(0, 512, (1, 4))
    with pytest.raises(ValueError, match="output_attentions"):
        lm(ids, output_attentions=True)
    with pytest.raises(ValueError, match="output_hidden_states"):
        lm(ids, output_hidden_states=True)
    with pytest.raises(ValueError, match="MlraCache"):
        lm(ids, cache=DynamicCache())
    with pytest.raises(ValueError, match="unsupported argument"):
        lm(ids, token_type_ids=torch.zeros_like(ids))


# ----------------------------------------------------------------------------- generation
def test_latent_cache_holds_compact_rows_only():
    model, lm = _lm("mlra_4")
    cfg = model.config
    cache = MlraCache(cfg.n_layers)
    lm.generate(torch.randint(0, 512, (2, 7)), max_new_tokens=5, cache=cache)
    T = 7 + 5 - 1  # the last token is never fed back
    assert cache.get_seq_length() == T
    assert set(cache.state(0)) == {"latent", "k_rope"}
    per_token = cfg.kv_lora_rank + cfg.rope_dim
    assert cache.nbytes == cfg.n_layers * 2 * T * per_token * 4
    expanded = cfg.n_layers * 2 * T * cfg.n_heads * (2 * cfg.head_dim + cfg.rope_dim) * 4
    assert cache.nbytes < expanded / 2


def test_greedy_equals_mlra_generate_and_uncached_loop(variant):
    model, lm = _lm(variant)
    prompt = torch.randint(1, 512, (1, 6))
    hf = lm.generate(prompt, max_new_tokens=6, do_sample=False)[0, 6:].tolist()
    assert hf == mlra.generate(model, prompt.tolist(), max_new_tokens=6)[0]
    assert hf == _uncached_greedy(model, prompt[0].tolist(), 6)
    assert len(set(hf)) > 1  # a model that says one token would prove little


def test_left_padded_batch_gives_each_prompt_alone():
    model, lm = _lm("gla_4")
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 512, (n,), generator=g) for n in (8, 3, 5)]
    ids, mask = _left_padded(rows)
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    alone = mlra.generate(model, [r.tolist() for r in rows], max_new_tokens=5)
    assert out[:, ids.shape[1]:].tolist() == alone


def test_seeded_sampling_equals_mlra_generate():
    model, lm = _lm("mlra_2")
    prompt = torch.randint(1, 512, (1, 5))
    for seed in (3, 4):
        torch.manual_seed(seed)
        hf = lm.generate(prompt, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=40,
                         top_p=0.9)
        ours = mlra.generate(model, prompt.tolist(), max_new_tokens=8, temperature=0.7,
                             top_k=40, top_p=0.9, seed=seed)
        assert hf[0, 5:].tolist() == ours[0]


@pytest.mark.parametrize("name", ["mlra_4", "tpa"])
def test_beam_search_and_repetition_penalty_match_uncached(name):
    """Beam search reorders the cache; the same search with use_cache=False (a full forward over
    every beam each step) gives the same beams and scores."""
    _, lm = _lm(name)
    ids, mask = _left_padded([torch.arange(5, 12), torch.arange(40, 44)])
    kw = dict(attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=2,
              repetition_penalty=1.3, return_dict_in_generate=True, output_scores=True)
    cached = lm.generate(ids, **kw)
    plain = lm.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(cached.sequences_scores, plain.sequences_scores, rtol=1e-4,
                               atol=1e-5)


def test_assisted_and_prompt_lookup_decoding_equal_greedy():
    """Both verify several draft tokens per forward and crop the cache back: greedy tokens."""
    _, lm = _lm("mla")
    _, draft = _lm("gqa", seed=1)
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6]])
    greedy = lm.generate(prompt, max_new_tokens=8, do_sample=False)
    lookup = lm.generate(prompt, max_new_tokens=8, do_sample=False, prompt_lookup_num_tokens=3)
    assisted = lm.generate(prompt, max_new_tokens=8, do_sample=False, assistant_model=draft)
    assert torch.equal(lookup, greedy) and torch.equal(assisted, greedy)


def test_lengths_generation_config_scores_and_streamer():
    model, lm = _lm("mla")
    prompt = torch.randint(1, 512, (1, 6))
    assert lm.generate(prompt, generation_config=GenerationConfig(max_new_tokens=5)).shape == (
        1, 11)
    assert lm.generate(prompt, max_length=13).shape == (1, 13)

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.flatten().tolist())

        def end(self):
            self.chunks.append("end")

    streamer = Collect()
    out = lm.generate(prompt, max_new_tokens=4, streamer=streamer, return_dict_in_generate=True,
                      output_scores=True, output_logits=True)
    new = out.sequences[0, 6:].tolist()
    assert streamer.chunks[0] == prompt[0].tolist() and streamer.chunks[-1] == "end"
    assert [c[0] for c in streamer.chunks[1:-1]] == new
    assert len(out.scores) == 4
    assert [int(s.argmax()) for s in out.scores] == new
    first = model(prompt).logits[0, -1]
    torch.testing.assert_close(out.logits[0][0], first, rtol=1e-5, atol=1e-5)


def test_unsupported_generation_options_raise():
    _, lm = _lm("gqa")
    ids = torch.randint(0, 512, (1, 4))
    with pytest.raises(ValueError, match="cache_implementation"):
        lm.generate(ids, max_new_tokens=2, cache_implementation="static")
    with pytest.raises(ValueError, match="MlraCache"):
        lm.generate(ids, max_new_tokens=2, cache=DynamicCache())
    with pytest.raises(ValueError, match="output_attentions"):
        lm.generate(ids, max_new_tokens=2, output_attentions=True, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="not used by the model"):
        lm.generate(ids, max_new_tokens=2, frobnicate=True)
