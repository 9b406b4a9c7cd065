"""Classes of the CUDA kernels of a training step, read from their names (shared by
``profile_train_step.py`` and ``bench_train.py``)."""

from __future__ import annotations

import re

CLASSES = [
    ("attention", r"^_(fwd|delta|dq|dkv)_kernel|attn|flash|fmha|sdpa"),
    ("compiled", r"^triton_"),
    ("optimizer", r"adam|multi_tensor|foreach|_amp_|lpnorm"),
    ("matmul", r"gemm|sm90_|cutlass|nvjet|xmma|wgmma|matmul|gemv|splitk"),
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
