"""The Hugging Face-style wrapper: logits/loss, padding on either side honoured, HF indexing,
generate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

import mlra
from mlra.hf import MlraForCausalLM
from mlra.io import save_model


def _padded(rows: list[torch.Tensor], left: bool, pad: int = 0):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


def test_padding_on_either_side_gives_each_sequence_alone(variant):
    model = tiny_model(variant)
    lm = MlraForCausalLM(model)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, model.config.vocab_size, (n,), generator=g) for n in (9, 4, 6)]
    for left in (True, False):
        ids, mask = _padded(rows, left)
        out = lm(ids, attention_mask=mask)
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            got = out.logits[i][mask[i].bool()]
            assert ((got - alone).abs().max() / alone.abs().max()).item() <= 1e-5


def test_loss_ignores_padding_and_minus_100():
    model = tiny_model("mlra_4")
    lm = MlraForCausalLM(model)
    rows = [torch.arange(3, 11), torch.arange(20, 25)]
    ids, mask = _padded(rows, left=False, pad=7)
    labels = ids.clone()
    labels[0, 3] = -100
    out = lm(input_ids=ids, attention_mask=mask, labels=labels)
    logit_rows, targets = [], []
    for i, r in enumerate(rows):
        lg = model(r[None]).logits[0]
        for t in range(len(r) - 1):
            if labels[i, t + 1] != -100:
                logit_rows.append(lg[t])
                targets.append(int(r[t + 1]))
    ref = F.cross_entropy(torch.stack(logit_rows), torch.tensor(targets))
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    # HF ModelOutput-style access
    assert out["loss"] is out.loss and out[0] is out.loss and out[1] is out.logits
    loss, logits = lm(ids, attention_mask=mask, labels=labels, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    assert lm(ids).keys() == ["logits"] and lm(ids)[0].shape == (2, ids.shape[1], 512)


def test_logits_to_keep_and_unsupported_cache():
    model = tiny_model("gqa")
    lm = MlraForCausalLM(model)
    ids = torch.randint(0, 512, (2, 6))
    torch.testing.assert_close(lm(ids, logits_to_keep=1).logits, lm(ids).logits[:, -1:])
    lm(ids, use_cache=False, output_attentions=False)  # HF keywords accepted
    with pytest.raises(ValueError, match="past_key_values"):
        lm(ids, past_key_values=object())
    assert lm.vocab_size == 512 and lm.max_position_embeddings == 256
    assert lm.device.type == "cpu" and lm.dtype == torch.float32


def test_generate_left_padded_hf_style(tmp_path):
    model = tiny_model("mla")
    save_model(model, tmp_path / "m")
    lm = MlraForCausalLM.from_pretrained(tmp_path / "m")
    rows = [torch.arange(5, 14), torch.arange(30, 33)]
    ids, mask = _padded(rows, left=True)
    alone = [mlra.generate(model, [r.tolist()], max_new_tokens=5)[0] for r in rows]
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=5)
    assert out.shape == (2, ids.shape[1] + 5)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    assert [o.tolist() for o in out[:, ids.shape[1]:]] == alone
    eos = alone[1][1]
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=eos,
                      pad_token_id=-1)
    tail = out[1, ids.shape[1]:].tolist()
    assert tail[: alone[1].index(eos) + 1] == alone[1][: alone[1].index(eos) + 1]
    assert set(tail[alone[1].index(eos) + 1:]) <= {-1}
