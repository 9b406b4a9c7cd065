"""Classes of the CUDA kernels of a training step, read from their names (shared by
``profile_train_step.py`` and ``bench_train.py``)."""

from __future__ import annotations

import re

CLASSES = [
    # inductor names its kernels after the ATen ops they fuse ("..._latent_train_attn_fwd_...",
    # "..._scaled_dot_product_flash_attention_..."): they are compiled elementwise, not attention
    ("compiled", r"^triton_(poi|red|per|for)_"),
    ("attention", r"^_(fwd|delta|dq|dkv)_kernel\b|flash_(fwd|bwd)|fmha|cudnn.*sdpa"),
    ("matmul", r"^triton_tem_|gemm|sm90_|cutlass|nvjet|xmma|wgmma|matmul|gemv|splitk"),
    ("optimizer", r"adam|multi_tensor|foreach|_amp_|lpnorm"),
    ("loss/head", r"log_softmax|softmax|nll|cross_entropy"),
    ("copy/cast", r"copy|cast|elementwise|fill|cat|index|reduce"),
]


def kernel_class(name: str) -> str:
    """The class of a CUDA kernel from its name (first matching pattern of ``CLASSES``)."""
    low = name.lower()
    for cls, pattern in CLASSES:
        if re.search(pattern, low):
            return cls
    return "other"
