"""Instruction counts of the compiled batch-1 kernels, without a GPU: the resident one-row
projections with their products as fp32 FMAs or on the tensor cores (SASS instructions from
the PDL wait to the end, the part that runs once the previous launch is done), and the
one-launch MLP with and without its in-loop trigger (``MlpConfig.next_left``: the loop's
asynchronous copies and shared memory must not change) and its run-time tail
(``MlpConfig.tail_steps``: a second pipelined loop, in the same shared memory). Compiled
for sm_90 with Triton's bundled ptxas; prints a Markdown table. ``--cases``: instead, every
plan the resident kernels' GPU tests ask for (both product forms, H200 limits) compiled the
same way, to find a shape that does not compile or spills before a device session does.

    PYTHONPATH=src python benchmarks/e2e_decode/resident_sass.py [--cases]
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import os
import sys

from mlra.kernels.aot import compile_sm90, sass_instructions
from mlra.kernels.gluon_skinny import compile_for_sm90

#: paper-size calls: (name, K, weights, rows per program as planned, norm, residual)
PROJECTIONS = [
    ("query up (MLRA-4)", 1024, 1, 32, True, False),
    ("query up (MLA)", 1536, 1, 32, True, False),
    ("q/kv down (MLRA-4)", 3072, 2, 8, True, False),
    ("output projection", 3072, 1, 8, False, True),
]


def after_wait(cubin: bytes) -> list[str]:
    """Instructions from the PDL wait (``ACQBULK``) on."""
    ins = sass_instructions(cubin)
    start = next((i for i, s in enumerate(ins) if "ACQBULK" in s), 0)
    return ins[start:]


def opcode(ins: str) -> str:
    words = ins.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def projections() -> list[str]:
    rows = ["| projection (K, rows per program) | products | instructions after the wait | "
            "tensor-core mma | shared-memory loads | FFMA | top opcodes |",
            "|---|---|---|---|---|---|---|"]
    for name, k, nw, bn, norm, res in PROJECTIONS:
        for products in ("fma", "mma"):
            ins = after_wait(compile_for_sm90(k, nw, bn, norm, res,
                                              products=products).asm["cubin"])
            ops = collections.Counter(opcode(s) for s in ins)
            top = ", ".join(f"{o} {n}" for o, n in ops.most_common(4))
            rows.append(f"| {name} ({k}, {bn}) | {products} | {len(ins)} | {ops['HMMA']} | "
                        f"{ops['LDS'] + ops['LDSM']} | {ops['FFMA']} | {top} |")
    return rows


def mlp() -> list[str]:
    """The MLP rows; the SASS hash tells whether a change left a form's code as it was (run
    this script against another tree with ``PYTHONPATH=that/src``: forms that tree does not
    have are left out)."""
    from mlra.kernels.aot import ptxas_usage
    from mlra.kernels.triton_mlp import _mlp_kernel

    params = inspect.signature(_mlp_kernel.fn).parameters
    types = {n: "*bf16" for n in "x_ptr g_ptr res_ptr wg_ptr wu_ptr wd_ptr out_ptr".split()}
    types.update(ws_ptr="*fp32", cnt_ptr="*i64", eps="fp32", rank_ptr="*i64")
    aligned = [n for n in [*types, "s_g", "s_u", "s_d"] if n in params]
    rows = ["| MLP (d 3072, 2 units per step, 4 stages) | cp.async | shared memory bytes | "
            "launch_dependents | atomics | registers, spills | SASS sha1 |",
            "|---|---|---|---|---|---|---|"]
    for left, tail in ((0, 0), (4, 0), (0, 1)):
        consts = dict(D_PAD=4096, BLOCK_H=2, COLS=32, P_PAD=256, PHASE=0, HAS_RES=True,
                      NUM_STAGES=4, ALIGNED=True, PDL=2, PF_ROWS=2, LINE=64, NEXT_LEFT=left)
        if tail:
            if "TAIL" not in params:
                continue
            consts.update(TAIL=tail)
        k = compile_sm90(_mlp_kernel, types, consts, aligned, num_warps=4, launch_pdl=True)
        ptx = k.asm["ptx"]
        use = ptxas_usage(ptx)
        sha = hashlib.sha1("\n".join(sass_instructions(k.asm["cubin"])).encode()).hexdigest()
        rows.append(f"| next_left={left}, tail={tail} | {ptx.count('cp.async.cg')} | "
                    f"{k.metadata.shared} | {ptx.count('griddepcontrol.launch_dependents')} | "
                    f"{ptx.count('atom.')} | {use['registers']}, "
                    f"{use['spill_stores']}/{use['spill_loads']} | {sha[:12]} |")
    return rows


def test_cases() -> list[str]:
    """The resident kernels' GPU test cases (``tests/test_gluon_skinny*.py``) as planned for
    the H200, each compiled for sm_90: whether it compiled, without spills, and its
    registers."""
    from pathlib import Path

    import mlra.kernels.gluon_skinny_mma  # noqa: F401  (compiled kernels, before the tests'
    # conftest asks for the interpreter on a machine without a GPU)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    interpret = os.environ.get("TRITON_INTERPRET")
    import test_gluon_skinny as fma_tests
    import test_gluon_skinny_mma as mma_tests

    if interpret is None:
        os.environ.pop("TRITON_INTERPRET", None)

    from mlra.kernels.aot import clean, hopper_summary
    from mlra.kernels.gluon_skinny import resident_plan

    sms, smem = fma_tests.H200_SMS, fma_tests.SM90_SMEM_PER_SM
    grid = {"fma": (fma_tests.CASES, [(None, None), (4, None), (8, 1), (8, 2), (16, None),
                                     (32, None), (32, 1)]),
            "mma": (mma_tests.CASES, [(bn, None) for bn in (None, 4, 8, 16, 32)])}
    rows = ["| products | K | rows of the weights | block_n asked | planned | box | compiled |",
            "|---|---|---|---|---|---|---|"]
    for products, (cases, params) in grid.items():
        done = set()
        for k, ns, norm, res in cases:
            for block_n, box in params:
                plan = resident_plan(k, ns, sms, smem, block_n, products)
                key = (k, len(ns), plan, box, norm, res)
                if plan is None or key in done:
                    continue
                done.add(key)
                try:
                    summary = hopper_summary(compile_for_sm90(k, len(ns), plan, norm, res,
                                                              box=box, products=products))
                    result = (f"clean, {summary['registers']} registers" if clean(summary)
                              else f"NOT clean: {summary}")
                except Exception as exc:  # a shape the compiler refuses: the finding itself
                    result = f"FAILED: {type(exc).__name__}: {str(exc)[:120]}"
                rows.append(f"| {products} | {k} | {list(ns)} | {block_n} | {plan} | {box} | "
                            f"{result} |")
    return rows


if __name__ == "__main__":
    if "--cases" in sys.argv[1:]:
        print("\n".join(test_cases()))
    else:
        print("\n".join(projections() + [""] + mlp()))
