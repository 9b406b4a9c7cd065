"""Feasibility probe: causal training attention (forward) of the latent family in Gluon, with
explicit warp specialisation for Hopper (sm_90) -- the driver. The kernels and their design
are in ``gluon_attn_kernels.py`` beside it; ``GLUON_PROBE.md`` records the results.

Modes: ``--compile-sm90`` (no GPU: compiles for sm_90 with Triton's bundled ptxas and reports
registers, spills, shared memory, PTX checks; ``--sweep`` for a table of configurations),
``--check`` and ``--bench`` (need an sm_90 GPU; exit code 2 without one).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from typing import Any

from gluon_attn_kernels import (
    BLOCK_M,
    CONSUMER_REGS,
    CONSUMER_WARPS,
    LOG2E,
    PRODUCER_REGS,
    _latent_train_fwd_ws,
)
from triton.experimental.gluon import language as gl

from mlra.kernels.aot import clean, compile_gluon_sm90, format_hopper_summary, hopper_summary


# ------------------------------------------------------------------------------------------
# host side
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Compile-time parameters: problem widths, branch count, tile rows, ring depth, branches
    per program, score overlap."""

    nb: int = 4
    block_n: int = 64
    num_buf: int = 2
    bpp: int = 2
    overlap: bool = False
    #: one consumer partition per warpgroup (each its 64 query rows) instead of one for both
    split: bool = False
    d: int = 128
    dv: int = 128
    r: int = 64

    @property
    def chunks(self) -> int:
        """Branch chunks (programs per (batch, head, query block))."""
        return self.nb // self.bpp

    def blocks(self) -> dict[str, list[int]]:
        """TMA block shapes (powers of two: NoPE / RoPE and keys / values are separate)."""
        return {"qn": [BLOCK_M, self.d], "qr": [BLOCK_M, self.r], "k": [self.block_n, self.d],
                "v": [self.block_n, self.dv], "kr": [self.block_n, self.r]}

    def layouts(self) -> dict[str, Any]:
        """Shared layouts of the blocks (128-byte swizzle for bf16)."""
        return {k: gl.NVMMASharedLayout.get_default_for(v, gl.bfloat16)
                for k, v in self.blocks().items()}

    def smem_estimate(self) -> int:
        """Bytes of the buffers (query block + ring), without barriers and compiler scratch."""
        q = BLOCK_M * (self.d + self.r) * 2
        stage = (self.bpp * (self.d + self.dv) + self.r) * self.block_n * 2
        return q + self.num_buf * stage

    def consts(self) -> dict[str, int]:
        """The kernel's constexpr arguments."""
        return {"BLOCK_M": BLOCK_M, "BLOCK_N": self.block_n, "D": self.d, "DV": self.dv,
                "R": self.r, "BPP": self.bpp, "NUM_BUF": self.num_buf,
                "OVERLAP": int(self.overlap), "WARPS": self.warps,
                "PRODUCER_REGS": PRODUCER_REGS, "SPLIT": int(self.split),
                "CONSUMER_REGS": CONSUMER_REGS}

    @property
    def warps(self) -> int:
        """Warps of the launch's default partition: both consumer warpgroups, or one."""
        return CONSUMER_WARPS // (2 if self.split else 1)

    def __str__(self) -> str:
        return (f"NB={self.nb} BLOCK_N={self.block_n} NUM_BUF={self.num_buf} "
                f"BPP={self.bpp} OVERLAP={int(self.overlap)}"
                + (" SPLIT=1" if self.split else ""))


def _validate(cfg: Config) -> None:
    if cfg.nb % cfg.bpp or cfg.bpp not in (1, 2):
        raise ValueError(f"BPP must be 1 or 2 and divide NB; got {cfg}")
    if BLOCK_M % cfg.block_n:
        raise ValueError("BLOCK_N must divide BLOCK_M (diagonal tiles)")
    if cfg.num_buf < 2:
        raise ValueError("NUM_BUF must be at least 2 (OVERLAP waits for tile i + 1 while it "
                         "holds tile i's slot)")


#: configurations compiled by ``--compile-sm90 --sweep`` (the first is the default)
SWEEP = tuple(
    Config(nb=nb, block_n=bn, num_buf=nbuf, bpp=bpp, overlap=ov)
    for nb, bpp in ((4, 2), (1, 1), (4, 1))
    for ov in (False, True)
    for bn in (32, 64, 128)
    for nbuf in (2, 3)
)


#: configurations timed by ``--bench`` without explicit tile options: those of the sweep that
#: compile without spills within shared memory and look most promising
BENCH = (
    Config(nb=4, block_n=64, num_buf=2, bpp=2),
    Config(nb=4, block_n=32, num_buf=3, bpp=2, overlap=True),
    Config(nb=4, block_n=128, num_buf=2, bpp=1),
    Config(nb=4, block_n=64, num_buf=3, bpp=1, overlap=True),
    Config(nb=1, block_n=128, num_buf=2, bpp=1),
    Config(nb=1, block_n=128, num_buf=2, bpp=1, overlap=True),
    Config(nb=1, block_n=64, num_buf=3, bpp=1, overlap=True),
    Config(nb=4, block_n=128, num_buf=2, bpp=1, split=True),
    Config(nb=4, block_n=64, num_buf=2, bpp=2, split=True),
    Config(nb=1, block_n=128, num_buf=2, bpp=1, split=True),
    Config(nb=1, block_n=128, num_buf=2, bpp=1, overlap=True, split=True),
)


def compile_sm90(cfg: Config) -> Any:
    """``_latent_train_fwd_ws`` compiled for sm_90 without a GPU (Triton's bundled ptxas)."""
    _validate(cfg)
    layouts, blocks = cfg.layouts(), cfg.blocks()
    types = {f"{k}_desc": f"tensordesc<bf16{blocks[k]},{layouts[k]!r}>" for k in blocks}
    types.update(o_ptr="*bf16" if cfg.chunks == 1 else "*fp32", lse_ptr="*fp32",
                 qk_scale="fp32", out_scale="fp32")
    return compile_gluon_sm90(_latent_train_fwd_ws, types, cfg.consts(),
                              aligned=("o_ptr", "lse_ptr"), num_warps=cfg.warps)


def compile_summary(cfg: Config) -> dict[str, Any]:
    """Compile one configuration: :func:`mlra.kernels.aot.hopper_summary` of it, or
    ``{"error": ...}`` on a compiler failure."""
    try:
        return hopper_summary(compile_sm90(cfg))
    except Exception as e:  # a probe: report any compiler failure
        msg = str(e).strip().splitlines()
        return {"error": f"{type(e).__name__}: {' | '.join(msg[-6:])[:1500]}"}


def report_compile(cfg: Config) -> bool:
    """Compile one configuration and print what the compiler made of it; True if it compiled
    without spills and fits sm_90's shared memory."""
    res = compile_summary(cfg)
    if "error" in res:
        print(f"[{cfg}] FAILED: {res['error']}")
        return False
    print(f"[{cfg}] compiled OK (buffers {cfg.smem_estimate()} bytes)")
    print("\n".join(format_hopper_summary(res)))
    return clean(res)


def sweep_table(configs: tuple[Config, ...]) -> bool:
    """Compile ``configs``; print one row each. True if the first compiled cleanly."""
    print(f"{'config':<48} {'status':<10} {'regs':>5} {'sass':>5} {'spill st/ld':>12} "
          f"{'smem':>7} {'fits':>5}")
    first_ok = False
    for n, cfg in enumerate(configs):
        res = compile_summary(cfg)
        if "error" in res:
            print(f"{str(cfg):<48} {'FAILED':<10} {res['error'][:200]}")
            continue
        first_ok |= n == 0 and clean(res)
        print(f"{str(cfg):<48} {'ok' if clean(res) else 'compiled':<10} {res['registers']:>5} "
              f"{res['sass_regs']!s:>5} {res['spill_stores']:>5}/{res['spill_loads']:<6} "
              f"{res['shared']:>7} {'yes' if res['fits'] else 'NO':>5}")
    return first_ok


# ------------------------------------------------------------------------------------------
# GPU: launch, check, bench
# ------------------------------------------------------------------------------------------
def attention(q_nope: Any, q_rope: Any, kv: Any, k_rope: Any, scale: float, out_scale: float,
              cfg: Config, reduce: bool = True) -> tuple[Any, Any]:
    """Run the probe kernel: ``(out [B, T, H, Dv] bf16, lse [B, NB, H, T] fp32, log2)``.
    Inputs contiguous bf16 with ``cfg``'s widths; several branch chunks are summed in torch
    (with ``reduce=False`` the fp32 partials ``[chunks, B, T, H, Dv]`` are returned instead)."""
    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    B, T, H, D = q_nope.shape
    NB, HKV = kv.shape[2], kv.shape[3]
    R, DV = q_rope.shape[-1], kv.shape[-1] - D
    if (NB, D, DV, R) != (cfg.nb, cfg.d, cfg.dv, cfg.r) or H % HKV:
        raise ValueError(f"shapes {tuple(kv.shape)} do not match {cfg}")
    _validate(cfg)
    for t in (q_nope, q_rope, kv, k_rope):
        if t.dtype != torch.bfloat16 or not t.is_contiguous():
            raise ValueError("inputs must be contiguous bf16")
    layouts, blocks = cfg.layouts(), cfg.blocks()
    kv2 = kv.view(B * T, NB * HKV * (D + DV))
    src = {"qn": q_nope.view(B * T, H * D), "qr": q_rope.view(B * T, H * R), "k": kv2,
           "v": kv2, "kr": k_rope.view(B * T, R)}
    descs = [TensorDescriptor.from_tensor(src[k], blocks[k], layouts[k]) for k in blocks]
    nc = cfg.chunks
    dev = q_nope.device
    if nc == 1:
        o = torch.empty(B, T, H, DV, dtype=torch.bfloat16, device=dev)
    else:
        o = torch.empty(nc, B, T, H, DV, dtype=torch.float32, device=dev)
    lse = torch.empty(B, NB, H, T, dtype=torch.float32, device=dev)
    grid = (B * H * nc, (T + BLOCK_M - 1) // BLOCK_M)
    _latent_train_fwd_ws[grid](*descs, o, lse, T, H, HKV, NB, B * T, scale * LOG2E, out_scale,
                               **cfg.consts(), num_warps=cfg.warps)
    if nc > 1 and reduce:
        o = o.sum(0).to(torch.bfloat16)
    return o, lse


def _inputs(B: int, T: int, H: int, HKV: int, cfg: Config, seed: int = 0) -> tuple[Any, ...]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape: int) -> Any:
        return torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)

    return (rnd(B, T, H, cfg.d), rnd(B, T, H, cfg.r), rnd(B, T, cfg.nb, HKV, cfg.d + cfg.dv),
            rnd(B, T, cfg.r))


def _ref_lse2(q_nope: Any, q_rope: Any, kv: Any, k_rope: Any, scale: float) -> Any:
    """Per-branch LSE in the log2 domain ``[B, NB, H, T]`` (fp32): ``log2(sum exp(scale *
    logits))``, the quantity the Triton forward stores (``m + log2(l)`` of the logits times
    ``scale * log2(e)``). The reference returns no LSE, so it is computed here the same way."""
    import torch

    D = q_nope.shape[-1]
    T, H = q_nope.shape[1], q_nope.shape[2]
    kv = kv.float().repeat_interleave(H // kv.shape[3], dim=3)
    logits = torch.einsum("bthd,bsnhd->bnhts", q_nope.float(), kv[..., :D])
    logits = logits + torch.einsum("bthr,bsr->bhts", q_rope.float(), k_rope.float())[:, None]
    keep = torch.ones(T, T, dtype=torch.bool, device=q_nope.device).tril()
    logits = (logits * scale).masked_fill(~keep, float("-inf"))
    return torch.logsumexp(logits, dim=-1) * LOG2E


def check_one(cfg: Config, B: int, T: int, H: int, HKV: int) -> bool:
    """One shape against the fp32 reference: max relative error of out and of the LSE."""
    import torch

    from mlra.kernels.reference import latent_train_attention_ref

    qn, qr, kv, kr = _inputs(B, T, H, HKV, cfg)
    scale = 1.0 / math.sqrt(cfg.d + cfg.r)
    out_scale = 1.0 / cfg.nb
    o, lse = attention(qn, qr, kv, kr, scale, out_scale, cfg)
    torch.cuda.synchronize()
    ref_o = latent_train_attention_ref(qn.float(), qr.float(), kv.float(), kr.float(), scale,
                                       out_scale)
    ref_l = _ref_lse2(qn, qr, kv, kr, scale)
    err_o = ((o.float() - ref_o).abs().max() / ref_o.abs().max()).item()
    err_l = ((lse - ref_l).abs().max() / ref_l.abs().max()).item()
    finite = bool(torch.isfinite(o).all() and torch.isfinite(lse).all())
    ok = finite and err_o < 2e-2 and err_l < 1e-3
    print(f"check [{cfg}] B={B} T={T} H={H} Hkv={HKV}: max rel err out {err_o:.3e}, "
          f"lse {err_l:.3e}, finite {finite} -> {'PASS' if ok else 'FAIL'}")
    return ok


def check(cfg: Config) -> bool:
    """``cfg`` at T = 1024 and an odd T (1001), MHA and GQA (H=4, Hkv=2)."""
    ok = True
    for B, T, H, HKV in ((1, 1024, 4, 4), (1, 1001, 4, 4), (2, 1001, 4, 2)):
        try:
            ok &= check_one(cfg, B, T, H, HKV)
        except Exception as e:  # a probe: report and go on
            print(f"check [{cfg}] B={B} T={T} H={H} Hkv={HKV}: ERROR {type(e).__name__}: {e}")
            ok = False
    return ok


def _time(fn: Any, iters: int) -> float:
    """Mean milliseconds per call of ``fn`` (CUDA events, after warm-up)."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench(cfg: Config, B: int = 4, T: int = 2048, H: int = 16, iters: int = 20) -> None:
    """Time the probe and :func:`mlra.kernels.triton_latent_train.forward` at one shape;
    TFLOP/s of useful FLOPs (causal half, RoPE scores once per tile)."""
    from mlra.kernels import triton_latent_train

    assert T % BLOCK_M == 0, "bench T must be a multiple of BLOCK_M"
    qn, qr, kv, kr = _inputs(B, T, H, H, cfg)
    scale = 1.0 / math.sqrt(cfg.d + cfg.r)
    out_scale = 1.0 / cfg.nb
    pairs = B * H * T * T / 2
    flops = 2 * pairs * (cfg.nb * cfg.d + cfg.r) + 2 * pairs * cfg.nb * cfg.dv
    ms = _time(lambda: attention(qn, qr, kv, kr, scale, out_scale, cfg), iters)
    print(f"bench gluon  [{cfg}] B={B} T={T} H={H}: {ms * 1e3:.1f} us, "
          f"{flops / ms / 1e9:.1f} TFLOP/s (host descriptor creation"
          f"{' and the torch chunk sum' if cfg.chunks > 1 else ''} included)")
    if cfg.chunks > 1:
        ms_k = _time(lambda: attention(qn, qr, kv, kr, scale, out_scale, cfg, reduce=False),
                     iters)
        print(f"bench gluon  [{cfg}] without the chunk sum: {ms_k * 1e3:.1f} us, "
              f"{flops / ms_k / 1e9:.1f} TFLOP/s")
    ms_t = _time(lambda: triton_latent_train.forward(qn, qr, kv, kr, scale, out_scale), iters)
    print(f"bench triton [NB={cfg.nb} default config] B={B} T={T} H={H}: {ms_t * 1e3:.1f} us, "
          f"{flops / ms_t / 1e9:.1f} TFLOP/s (also stores per-branch outputs when NB > 1) "
          f"-> gluon/triton time {ms / ms_t:.2f}x")


def _have_sm90() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--compile-sm90 [--sweep]`` / ``--check`` / ``--bench``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-sm90", action="store_true", help="compile for sm_90 (no GPU)")
    ap.add_argument("--sweep", action="store_true",
                    help="with --compile-sm90: table of the SWEEP configurations; with "
                         "--check: check every SWEEP configuration that compiles cleanly")
    ap.add_argument("--check", action="store_true", help="compare with the reference (sm_90)")
    ap.add_argument("--bench", action="store_true", help="time NB=4 and NB=1 (sm_90)")
    ap.add_argument("--nb", type=int, default=4, help="branches (compile / check)")
    ap.add_argument("--block-n", type=int, default=None,
                    help="key tile rows (default: 64 with BPP > 1, else 128)")
    ap.add_argument("--num-buf", type=int, default=2)
    ap.add_argument("--bpp", type=int, default=None,
                    help="branches per program (default: 2 for an even NB, else 1)")
    ap.add_argument("--overlap", action="store_true",
                    help="issue the next score wgmma before this branch's softmax")
    ap.add_argument("--split", action="store_true",
                    help="one consumer partition per warpgroup (64 query rows each)")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    if not (args.compile_sm90 or args.check or args.bench):
        ap.error("give --compile-sm90, --check and/or --bench")

    def cfg_for(nb: int) -> Config:
        bpp = min(args.bpp or (2 if nb % 2 == 0 else 1), nb)
        return Config(nb=nb, block_n=args.block_n or (64 if bpp > 1 else 128),
                      num_buf=args.num_buf, bpp=bpp, overlap=args.overlap, split=args.split)

    explicit = ((args.block_n, args.bpp) != (None, None) or args.num_buf != 2 or args.overlap
                or args.split)

    ok = True
    if args.compile_sm90:
        if args.sweep:
            ok &= sweep_table(SWEEP)
        else:
            ok &= report_compile(cfg_for(args.nb))
    if args.check or args.bench:
        if not _have_sm90():
            print("--check / --bench need an sm_90 (Hopper) GPU; none found", file=sys.stderr)
            return 2
    if args.check:
        if args.sweep:
            for cfg in SWEEP:
                res = compile_summary(cfg)
                if "error" in res or not clean(res):
                    print(f"check [{cfg}]: skipped (does not compile cleanly)")
                    continue
                ok &= check(cfg)
        elif explicit:
            ok &= check(cfg_for(args.nb))
            if args.nb != 1:
                ok &= check(replace(cfg_for(1), bpp=1))
        else:
            for cfg in BENCH:
                ok &= check(cfg)
    if args.bench:
        for cfg in (cfg_for(4), cfg_for(1)) if explicit else BENCH:
            try:
                bench(cfg, iters=args.iters)
            except Exception as e:  # a probe: report and go on
                print(f"bench [{cfg}]: ERROR {type(e).__name__}: {e}")
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
