"""The kernel classes of the training benchmark's split (``benchmarks/train/kernel_classes.py``):
inductor kernels named after the attention op they feed are elementwise work, not attention;
the fused and SDPA attention kernels, cuBLAS / template GEMMs and the optimizer are told apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "train" / "kernel_classes.py"


@pytest.fixture(scope="module")
def kernel_class():
    spec = importlib.util.spec_from_file_location("kernel_classes", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel_class


@pytest.mark.parametrize("name,cls", [
    ("_fwd_kernel", "attention"), ("_dq_kernel", "attention"), ("_dkv_kernel", "attention"),
    ("_delta_kernel", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<192>>", "attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
    ("triton_poi_fused_latent_train_attn_fwd_mul_sin_transpose_0", "compiled"),
    ("triton_per_fused__scaled_dot_product_flash_attention__to_copy_cat_1", "compiled"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_4", "compiled"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>", "copy/cast"),
    ("some_custom_kernel", "other"),
])
def test_kernel_names_fall_in_their_class(kernel_class, name, cls):
    assert kernel_class(name) == cls
