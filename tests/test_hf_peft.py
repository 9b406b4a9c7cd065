"""peft LoRA on MLRA models through a plain ``LoraConfig(task_type="CAUSAL_LM")``, the latent
up-projection ``wkv_b`` included: a training step changes only the adapters, the adapted model
decodes through the cache (absorbed form) as its full forward does, and it saves, reloads and
merges into a plain model with the usual checkpoint keys."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model

pytest.importorskip("peft")
pytest.importorskip("transformers", minversion="5.24")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

import mlra  # noqa: E402
from mlra.hf import MlraForCausalLM  # noqa: E402
from mlra.hf.peft import LoraUpProjection  # noqa: E402
from mlra.io import save_model  # noqa: E402

TARGETS = ["wq_b", "wkv_b", "wo"]


def _peft(name: str = "mlra_4"):
    model = tiny_model(name, init_std=0.3)
    base = MlraForCausalLM.from_model(copy.deepcopy(model), pad_token_id=0)
    config = LoraConfig(task_type="CAUSAL_LM", target_modules=TARGETS, r=4, lora_alpha=8)
    return model, get_peft_model(base, config)


def _train_step(lm, steps: int = 3) -> None:
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        loss = lm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_lora_wraps_wkv_b_and_trains_only_adapters():
    model, lm = _peft("mlra_2")
    wrapped = lm.base_model.model.model.layers[0].attn.wkv_b
    assert isinstance(wrapped, LoraUpProjection)
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("wkv_b.lora_A" in n for n in trainable)
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():  # LoRA B starts at zero: the model is unchanged
        torch.testing.assert_close(lm(input_ids=ids).logits, model(ids).logits)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    _train_step(lm)
    changed = {n for n, p in lm.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    with torch.no_grad():
        assert not torch.allclose(lm(input_ids=ids).logits, model(ids).logits, atol=1e-3)


def test_adapted_model_generates_saves_and_merges(tmp_path):
    model, lm = _peft("mlra_4")
    _train_step(lm)
    lm.eval()
    prompt = torch.randint(1, 512, (1, 6))
    with torch.no_grad():
        full = lm(input_ids=prompt).logits
        out = lm.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        # the cached, absorbed decode sees the adapted wkv_b: same tokens as full forwards
        ids = prompt[0].tolist()
        for _ in range(6):
            ids.append(int(lm(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert out[0].tolist() == ids

    lm.save_pretrained(tmp_path / "adapter")
    base = MlraForCausalLM.from_model(copy.deepcopy(model), pad_token_id=0)
    again = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=prompt).logits, full)

    merged = lm.merge_and_unload()
    assert type(merged) is MlraForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(merged(prompt).logits, full, rtol=1e-4, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = MlraForCausalLM.from_pretrained(tmp_path / "merged")
    # the merged weights in mlra's own format: the checkpoint key is layers.N.attn.wkv_b
    assert "layers.0.attn.wkv_b" in merged.model.state_dict()
    save_model(merged.model, tmp_path / "ours")
    ours = mlra.load_checkpoint(tmp_path / "ours")
    with torch.no_grad():
        assert torch.equal(reloaded(prompt).logits, merged(prompt).logits)
        assert torch.equal(ours(prompt).logits, merged(prompt).logits)
