"""The next-token cross-entropy shared by the trainer, the model and the HF wrapper: fp32
maths whatever the logits' dtype, ignored targets, reductions, and the compiled form the
trainer uses with ``compile=True`` (same values and gradients as the eager one)."""

from __future__ import annotations

import pytest
import torch

from mlra.loss import IGNORE_INDEX, compiled_token_cross_entropy, token_cross_entropy
from mlra.train.config import TrainConfig
from mlra.train.metrics import read_metrics
from mlra.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(3, 7, 50, generator=g)).to(dtype)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    targets[0, 2] = targets[2, 6] = IGNORE_INDEX
    return logits, targets


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target loss in float64, 0 where ignored."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = targets != IGNORE_INDEX
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return torch.where(keep, -picked, torch.zeros_like(picked))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reductions_match_a_float64_reference(dtype):
    logits, targets = _case(dtype)
    ref = _reference(logits, targets)
    n = int((targets != IGNORE_INDEX).sum())
    none = token_cross_entropy(logits, targets, reduction="none")
    assert none.dtype == torch.float32 and none.shape == targets.shape
    torch.testing.assert_close(none.double(), ref, rtol=1e-6, atol=1e-6)
    assert none[0, 2] == 0 and none[2, 6] == 0
    torch.testing.assert_close(token_cross_entropy(logits, targets, reduction="sum").double(),
                               ref.sum(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(token_cross_entropy(logits, targets).double(), ref.sum() / n,
                               rtol=1e-6, atol=1e-6)


def test_refuses_targets_of_another_shape():
    logits, targets = _case(torch.float32)
    with pytest.raises(ValueError, match=r"targets of shape \(3, 7\)"):
        token_cross_entropy(logits, targets[:, :-1])


def test_compiled_form_equals_the_eager_one_in_value_and_gradient():
    fn = compiled_token_cross_entropy()
    assert compiled_token_cross_entropy() is fn  # built once
    logits, targets = _case(torch.bfloat16, seed=1)
    results = []
    for f in (token_cross_entropy, fn):
        x = logits.clone().requires_grad_(True)
        loss = f(x, targets)
        loss.backward()
        assert x.grad.dtype == torch.bfloat16
        results.append((loss.detach(), x.grad.float()))
    (loss_e, grad_e), (loss_c, grad_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-6)
    # gradients are (softmax - one-hot) / n rounded to bf16: equal within one bf16 step
    torch.testing.assert_close(grad_c, grad_e, rtol=2**-7, atol=1e-6)
    assert grad_e[0, 2].abs().max() == 0  # an ignored target gets no gradient


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_training_follows_the_eager_run(tmp_path, mlra_cache, device):
    """``compile=True`` (compiled blocks and loss) trains to the same losses as eager: to fp32
    rounding on a CPU; on a GPU (bf16 autocast) within the rounding the compiled blocks'
    different fusion brings (3e-5..5e-4 measured on an H200)."""
    common = dict(model="mla", size="tiny", data="builtin", steps=3, batch_size=2, seq_len=32,
                  lr=3e-3, warmup_steps=1, eval_interval=3, val_tokens=128, log_interval=1,
                  progress=False, model_overrides={"n_layers": 1, "zero_init_output": False},
                  device=device)
    losses = []
    for compiled in (False, True):
        out = tmp_path / f"run{int(compiled)}"
        train(TrainConfig(out=str(out), compile=compiled, **common), log=lambda m: None)
        losses.append([r["loss"] for r in read_metrics(out / "metrics.jsonl")
                       if r["split"] == "train"])
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], abs=2e-4 if device == "cpu" else 2e-3)
