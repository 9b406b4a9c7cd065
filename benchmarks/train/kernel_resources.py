"""Registers, spills and shared memory of the fused training-attention kernels, on a CPU.

Each kernel is compiled ahead of time for sm_90 (Triton's bundled ptxas, no GPU) with the
16-byte divisibility the runtime gives its pointer and stride arguments, at the launch
configuration the library uses for a branch count (``triton_latent_train.GPU_CONFIGS``) or at
the ones given, and ``ptxas -v`` reports what each needs. A first triage before spending GPU
time: a configuration that spills or exceeds the 227 KB of shared memory a Hopper
multiprocessor has is slow or does not launch.

    python benchmarks/train/kernel_resources.py [--branches 1,4] [--fwd NBC,BM,BN,STAGES,WARPS;...]
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90


def _compile(kernel, consts: dict, stages: int, warps: int) -> tuple[str, int]:
    from mlra.kernels.aot import compile_sm90

    tensors = {"Qn", "Qr", "Kn", "V", "Kr", "O", "OB", "LSE", "DO", "DELTA", "DQn", "DQr", "DKV",
               "DKR"}
    fp32 = {"LSE", "DELTA", "DQn", "DQr", "DKR", "OB"}
    params = inspect.signature(kernel.fn).parameters
    types = {p: ("*fp32" if p in fp32 else "*bf16") for p in params if p in tensors}
    types.update({p: "fp32" for p in ("qk_scale", "out_scale", "scale")})
    aligned = [p for p in params if p in tensors or p.startswith("s_")]
    compiled = compile_sm90(kernel, types, consts, aligned, num_warps=warps, num_stages=stages)
    return compiled.asm["ptx"], compiled.metadata.shared


def _ptxas_report(ptx: str) -> str:
    from mlra.kernels.aot import ptxas_usage

    u = ptxas_usage(ptx)
    spills = "?" if u["spill_stores"] is None else f"{u['spill_stores']} / {u['spill_loads']}"
    return (f"{u['registers'] or '?'} | {spills} | "
            f"{'yes' if u['arrive_injected'] else 'no'}")


def main(argv: list[str] | None = None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    from mlra.kernels import triton_latent_train as train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--branches", default="1,4", help="branch counts (library configurations)")
    p.add_argument("--fwd", default="", help="extra forward configurations for the largest "
                   "branch count: NBC,BLOCK_M,BLOCK_N,STAGES,WARPS;...")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rope-dim", type=int, default=64)
    args = p.parse_args(argv)
    dims = dict(GROUP=1, DH=args.head_dim, DR=args.rope_dim, DV=args.head_dim)
    rows = []
    branch_counts = [int(b) for b in args.branches.split(",")]
    for nb in branch_counts:
        cfg = train.default_config(nb)
        nbc = train._chunk(nb, cfg.branches_per_program)
        dq_nbc = train._chunk(nb, cfg.dq_branches_per_program)
        rows += [
            (f"fwd, {nb} branches", train._fwd_kernel,
             dict(NB=nb, NBC=nbc, **dims, BLOCK_M=cfg.fwd_block_m, BLOCK_N=cfg.fwd_block_n,
                  STORE_OB=nbc < nb), cfg.fwd_stages, cfg.fwd_warps),
            (f"dq, {nb} branches", train._dq_kernel,
             dict(NB=nb, NBC=dq_nbc, **dims, BLOCK_M=cfg.dq_block_m, BLOCK_N=cfg.dq_block_n),
             cfg.dq_stages, cfg.dq_warps),
            (f"dkv, {nb} branches", train._dkv_kernel,
             dict(NB=nb, **dims, BLOCK_M=cfg.dkv_block_m, BLOCK_N=cfg.dkv_block_n),
             cfg.dkv_stages, cfg.dkv_warps),
        ]
    nb = max(branch_counts)
    for spec in filter(None, args.fwd.split(";")):
        nbc, bm, bn, st, w = (int(v) for v in spec.split(","))
        rows.append((f"fwd, {nb} branches, NBC={nbc}", train._fwd_kernel,
                     dict(NB=nb, NBC=nbc, **dims, BLOCK_M=bm, BLOCK_N=bn, STORE_OB=nbc < nb),
                     st, w))
    print("| kernel | block M x N | stages | warps | shared KB | registers | spill stores / "
          "loads (bytes) | warpgroup.arrive injected |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kernel, consts, stages, warps in rows:
        try:
            ptx, shared = _compile(kernel, consts, stages, warps)
            report = _ptxas_report(ptx)
        except Exception as exc:  # resources beyond the target: say so and go on
            shared, report = 0, f"failed: {str(exc).splitlines()[0][:80]} | | "
        over = " (over the limit)" if shared > SMEM_LIMIT else ""
        print(f"| {name} | {consts['BLOCK_M']} x {consts['BLOCK_N']} | {stages} | {warps} | "
              f"{shared / 1024:.0f}{over} | {report} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
