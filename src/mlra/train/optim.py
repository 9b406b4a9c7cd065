"""AdamW parameter groups, gradient clipping and the paper's learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to weight matrices only: not to norm gains (including the latent
    family's per-head ``kv_norm``), biases or the tied embedding."""
    leaf = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if "norm" in leaf or "norm" in parent or name.startswith("embed."):
        return False
    return param.ndim >= 2


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Two AdamW groups (decay / no decay) or, with ``decay_all`` (the paper's setting), one."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_all:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    decay = [p for n, p in params if is_decayed(n, p)]
    rest = [p for n, p in params if not is_decayed(n, p)]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
    decay_all: bool = False, fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters (fused kernel on CUDA when ``fused``)."""
    groups = param_groups(model, weight_decay, decay_all)
    groups = [g for g in groups if g["params"]]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def clip_gradients(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                   max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``params`` so that their global 2-norm is at most ``max_norm``
    (as :func:`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.

    With a fused AdamW the factor goes to the fused kernel as its ``grad_scale`` input (the
    attribute :class:`torch.amp.GradScaler` sets) instead of a separate multiply over all
    gradients: the kernel divides each gradient as it reads it (and stores it back divided),
    which saves one read of every gradient per step. Call it before every ``optimizer.step()``
    (the factor stays on the optimizer until the next call).
    """
    params = list(params)
    if not optimizer.defaults.get("fused"):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if math.isinf(max_norm):  # nothing to clip: no factor, no write-back of the gradients
        optimizer.__dict__.pop("grad_scale", None)
        return norm
    # clip_grad_norm_ multiplies by min(max_norm / (norm + 1e-6), 1); this divides by the
    # inverse (fp32, what the fused kernel takes, whatever the gradients' dtype)
    optimizer.grad_scale = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)
    return norm


def lr_at(step: int, peak: float, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``peak`` over
    ``warmup`` steps, then cosine decay to ``min_ratio * peak`` at step ``total``, then flat."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    floor = min_ratio * peak
    if step >= total:
        return floor
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
