"""FlashMLA (``sgl_kernel.flash_mla`` from the PyPI package ``sglang-kernel``, Hopper only) as
the reference MLA decode kernel. Optional: :func:`load_flashmla` returns the module or the reason
it could not be imported."""

from __future__ import annotations

import ctypes
import glob
import importlib
import os
import site
import sys
from collections.abc import Callable

import torch


def _preload_cuda_libs() -> list[str]:
    """Load libnvrtc/libcudart of the CUDA 13 wheels globally (the extension links them by
    soname; torch may not have loaded nvrtc yet)."""
    loaded = []
    roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    for name in ("libcudart.so.13", "libnvrtc.so.13"):
        for root in roots:
            hits = glob.glob(os.path.join(root, "nvidia", "**", name), recursive=True)
            if hits:
                ctypes.CDLL(hits[0], mode=ctypes.RTLD_GLOBAL)
                loaded.append(hits[0])
                break
    return loaded


def load_flashmla():
    """``(module, None)`` when ``sgl_kernel.flash_mla`` works here, else ``(None, reason)``."""
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major != 9:
        return None, f"FlashMLA needs a Hopper GPU (sm_90), this is sm_{major}x"
    try:
        importlib.import_module("sgl_kernel.flashmla_ops")
    except Exception as first:  # missing shared libraries: preload them once and retry
        try:
            _preload_cuda_libs()
            importlib.import_module("sgl_kernel.flashmla_ops")
        except Exception as exc:
            return None, f"sgl_kernel.flashmla_ops failed to import: {first!r}; retry: {exc!r}"
    try:
        fm = importlib.import_module("sgl_kernel.flash_mla")
    except Exception as exc:
        return None, f"sgl_kernel.flash_mla failed to import: {exc!r}"
    err = getattr(fm, "_flashmla_import_error", None)
    if err is not None:
        return None, f"sgl_kernel.flash_mla reports {err!r}"
    return fm, None


def flashmla_mla_call(
    fm, q_latent: torch.Tensor, q_rope: torch.Tensor, cache: torch.Tensor,
    block_table: torch.Tensor, seq_lens: torch.Tensor, scale: float,
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A closure running FlashMLA on our MLA inputs (one stream, row ``[latent | rope]``, the
    layout FlashMLA uses). Scheduling metadata is computed once, outside the timed call, as a
    serving engine does once per step for all layers. Returns ``(out [B,Tq,H,W] bf16,
    lse [B,H,Tq] fp32)``."""
    b, tq, nb, hq, w = q_latent.shape
    if nb != 1:
        raise ValueError("FlashMLA serves one latent stream (MLA)")
    q = torch.cat([q_latent[:, :, 0], q_rope], dim=-1).contiguous()
    kc = cache.view(cache.shape[0], cache.shape[1], 1, cache.shape[2])
    meta, splits = fm.get_mla_metadata(seq_lens, tq * hq, 1)

    def call():
        return fm.flash_mla_with_kvcache(q, kc, block_table, seq_lens, w, meta, splits,
                                         softmax_scale=scale, causal=tq > 1)

    return call
