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


def _default_consts(kernel: Any, types: dict[str, str]) -> dict[str, Any]:
    """Constexpr parameters of ``kernel`` with defaults, as constants (as a launch that omits
    them passes them; typed as i32 they would compile every branch on them at run time), and
    parameters defaulting to None that ``types`` does not type (a launch that omits one
    passes a constexpr None, e.g. ``trace_ptr``)."""
    sig = inspect.signature(kernel.fn).parameters
    return {p: v.default for p, v in sig.items()
            if ("constexpr" in str(v.annotation) and v.default is not inspect.Parameter.empty)
            or (v.default is None and p not in types)}


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

    params = list(inspect.signature(kernel.fn).parameters)
    consts = {**_default_consts(kernel, types), **consts}
    signature = {p: "constexpr" if p in consts else types.get(p, "i32") for p in params}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(params.index(k),): v for k, v in consts.items()},
                    attrs={(params.index(p),): [["tt.divisibility", 16]] for p in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


#: the most shared memory one thread block may use on sm_90 (227 KB)
SM90_SMEM_PER_BLOCK = 232448


def compile_gluon_sm90(kernel: Any, types: dict[str, str], consts: dict[str, Any],
                       aligned: Iterable[str] = (), **options: Any) -> Any:
    """As :func:`compile_sm90` for a ``gluon.jit`` kernel (its tensor descriptors typed as
    ``tensordesc<bf16[rows, cols],layout>`` in ``types``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    params = list(kernel.arg_names)
    consts = {**_default_consts(kernel, types), **consts}
    signature = {p: "constexpr" if p in consts else types.get(p, "i32") for p in params}
    src = GluonASTSource(fn=kernel, signature=signature,
                         constexprs={(params.index(k),): v for k, v in consts.items()},
                         attrs={(params.index(p),): [["tt.divisibility", 16]] for p in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def sass_text(cubin: bytes) -> str | None:
    """The SASS of ``cubin`` as Triton's bundled ``nvdisasm -c`` prints it (None without
    ``nvdisasm``)."""
    from triton.backends.nvidia import compiler

    nvdisasm = os.path.join(os.path.dirname(compiler.get_ptxas(90).path), "nvdisasm")
    if not os.path.exists(nvdisasm):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True).stdout


def sass_peak_registers(cubin: bytes) -> int | None:
    """Highest general register index + 1 in the SASS (Triton's bundled ``nvdisasm``): what
    the busiest partition of a warp-specialised kernel really uses under its ``setmaxnreg``
    budget (``ptxas -v`` reports the launch's register count instead)."""
    text = sass_text(cubin)
    regs = [int(r) for r in re.findall(r"\bR(\d+)\b", text or "")]
    return max(regs) + 1 if regs else None


def sass_instructions(cubin: bytes) -> list[str]:
    """The SASS instructions of ``cubin`` (opcode and operands, predicate included), in
    order."""
    out = []
    for line in (sass_text(cubin) or "").splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if m:
            out.append(m.group(1).strip())
    return out


_COUNTED = ("cp.async.bulk.tensor", "wgmma.mma_async", "wgmma.wait_group", "mbarrier.try_wait",
            "mbarrier.arrive", "setmaxnreg")


def hopper_summary(compiled: Any) -> dict[str, Any]:
    """What the compiler made of a kernel compiled for sm_90: :func:`ptxas_usage`, the SASS
    peak register, shared memory (and whether it fits a block), warps, counts of the Hopper
    instructions (TMA, wgmma, mbarriers, ``setmaxnreg``), the wgmma shapes, the
    ``setmaxnreg`` values and whether the TTGIR is warp-specialised."""
    ptx = compiled.asm["ptx"]
    shared = compiled.metadata.shared
    return {
        **ptxas_usage(ptx), "sass_regs": sass_peak_registers(compiled.asm["cubin"]),
        "shared": shared, "fits": shared <= SM90_SMEM_PER_BLOCK,
        "num_warps": compiled.metadata.num_warps,
        "counts": {n: ptx.count(n) for n in _COUNTED},
        "wgmma_shapes": sorted(set(re.findall(
            r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
        "setmaxnreg": sorted(set(re.findall(
            r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx))),
        "warp_specialized": "ttg.warp_specialize" in compiled.asm["ttgir"],
        "tma_boxes": [m["block_size"] for m in
                      getattr(compiled.metadata, "tensordesc_meta", None) or []],
    }


def format_hopper_summary(summary: dict[str, Any]) -> list[str]:
    """:func:`hopper_summary` as report lines."""
    s = summary
    return [
        f"  registers (ptxas -v, sm_90a): {s['registers']}, spill stores/loads "
        f"{s['spill_stores']}/{s['spill_loads']} bytes, warpgroup.arrive injected: "
        f"{s['arrive_injected']}; peak register in the SASS: {s['sass_regs']}",
        f"  shared memory: {s['shared']} bytes ({'fits' if s['fits'] else 'EXCEEDS'} sm_90's "
        f"{SM90_SMEM_PER_BLOCK} per block); num_warps {s['num_warps']}",
        "  instruction counts: " + ", ".join(f"{n} {c}" for n, c in s["counts"].items())
        + f"; wgmma shapes {s['wgmma_shapes']}",
        f"  setmaxnreg: {s['setmaxnreg']}; warp-specialised TTGIR: {s['warp_specialized']}; "
        f"TMA boxes per descriptor: {s['tma_boxes']}",
    ]


def clean(summary: dict[str, Any]) -> bool:
    """Whether a :func:`hopper_summary` shows no spills and a block that fits."""
    return bool(summary["fits"]) and not summary["spill_stores"] and not summary["spill_loads"]


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
