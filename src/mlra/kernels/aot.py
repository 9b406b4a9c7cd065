"""Ahead-of-time compilation of a Triton kernel for Hopper (sm_90) on any machine, GPU or not
(Triton's bundled ptxas): for checks of what the compiler makes of a kernel -- the order of
its PTX instructions, its shared-memory buffers, its registers -- in CPU tests and tools.
Needs Triton; not used at run time."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from typing import Any


def compile_sm90(kernel: Any, types: dict[str, str], consts: dict[str, Any],
                 aligned: Iterable[str] = (), **options: Any) -> Any:
    """``kernel`` (a ``triton.jit`` function) compiled for sm_90: ``types`` gives the argument
    types by name (default ``i32``), ``consts`` the constexpr values, ``aligned`` the
    arguments to treat as multiples of 16 (as the runtime specialises 16-byte aligned pointers
    and strides; without it no load is vectorised or pipelined); ``options`` are Triton's
    (``num_warps``, ``num_stages``, ``launch_pdl``...). Returns the compiled kernel
    (``.asm["ptx"]``, ``.asm["ttgir"]``, ``.metadata``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = inspect.signature(kernel.fn).parameters
    params = list(sig)
    # constexpr parameters not given take their defaults as constants (as a launch does);
    # typed as i32 they would compile every branch on them at run time
    consts = {**{p: v.default for p, v in sig.items()
                 if "constexpr" in str(v.annotation) and v.default is not inspect.Parameter.empty},
              **consts}
    signature = {p: "constexpr" if p in consts else types.get(p, "i32") for p in params}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(params.index(k),): v for k, v in consts.items()},
                    attrs={(params.index(p),): [["tt.divisibility", 16]] for p in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_usage(ptx: str) -> dict:
    """What ``ptxas -v`` (Triton's, sm_90a) reports for ``ptx``: ``registers``,
    ``spill_stores`` / ``spill_loads`` (bytes per thread; None where not reported) and
    ``arrive_injected`` (ptxas inserted ``warpgroup.arrive``: a pipelining hazard it fixed)."""
    from triton.backends.nvidia import compiler

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        run = subprocess.run([compiler.get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", path,
                              "-o", os.devnull], capture_output=True, text=True)
    text = run.stderr + run.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(spill.group(1)) if spill else None,
            "spill_loads": int(spill.group(2)) if spill else None,
            "arrive_injected": "warpgroup.arrive is injected" in text}
