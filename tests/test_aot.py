"""The ahead-of-time sm_90 compile helper behind the CPU checks of kernel code (buffers,
registers, PTX order) compiles a kernel as a launch would: constexpr parameters left out take
their defaults as constants (typed as i32 instead, every branch on them would be compiled in
and the checks would read a different kernel)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ptxas_for_sm90, run_without_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")

SCRIPT = """
import re
import triton
import triton.language as tl
from mlra.kernels.aot import compile_sm90

@triton.jit
def k(p, EXTRA: tl.constexpr = False):
    tl.store(p, 1.0)
    if EXTRA:
        tl.store(p + 1, 2.0)

for consts in ({}, {"EXTRA": True}):
    ptx = compile_sm90(k, {"p": "*fp32"}, consts, ["p"]).asm["ptx"]
    print(len(re.findall(r"st\\.global", ptx)))
"""


@pytest.mark.skipif(not ptxas_for_sm90(), reason="no ptxas for sm_90")
def test_constexpr_defaults_are_compiled_as_constants(tmp_path):
    script = tmp_path / "aot_defaults.py"  # Triton reads a kernel's source from its file
    script.write_text(SCRIPT)
    assert run_without_interpreter([str(script)], timeout=300).split() == ["1", "2"]
