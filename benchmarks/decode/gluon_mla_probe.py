"""Feasibility probe: MLA decode attention written in Gluon with explicit warp specialisation.

One program attends one block of ``BLOCK_M`` = 64 query heads over its own contiguous range of
a latent cache ``[n_tokens, 576]`` (bf16; columns 0..511 the latent, 512..575 the RoPE keys;
no paging, no masking: the range is a multiple of ``BLOCK_N``). Two partitions:

* producer (worker, 1 warp, 24 registers): one TMA load of Q into shared memory, then TMA
  loads of the cache tiles into a ring of ``NUM_BUF`` shared buffers. Gluon block shapes must
  be powers of two, so each 576-wide row goes in two blocks: latent ``[BLOCK_N, 512]`` and
  RoPE ``[BLOCK_N, 64]`` (two descriptors over the same rows, one barrier for both);
* consumer (default partition, 8 warps = two warpgroups): per tile ``S = Q_rope @ K_rope^T +
  Q_lat @ K_lat^T`` (wgmma, operands in shared memory), online softmax in base 2, ``O += P @
  V`` (wgmma, P from registers, V = the latent block). The MMA layout puts the two warpgroups
  side by side along N: each owns 256 of the 512 value columns and 32 of the score columns
  (row max / sum and P cross between them through shared memory, compiler-managed). This is
  not FlashMLA's seesaw schedule. ``OVERLAP=1`` issues the next tile's scores (async wgmma)
  before this tile's softmax.

Buffer protocol (per slot ``s``, ``ready[s]`` and ``empty[s]`` are count-1 mbarriers; tile
``i`` uses slot ``i % NUM_BUF`` in round ``r = i // NUM_BUF``):

* producer: wait ``empty[s]`` with parity ``(r & 1) ^ 1`` (round 0 passes on the fresh
  barrier), ``expect(ready[s], tile bytes)``, TMA into slot ``s`` signalling ``ready[s]``;
* consumer: wait ``ready[s]`` with parity ``r & 1``, both products, then one arrive on
  ``empty[s]`` after ``P @ V`` has been waited for (``wgmma.wait_group 0``: no wgmma still
  reads the slot). The arrive is made by one thread; the compiled PTX has a ``bar.sync`` over
  the 256 consumer threads right before it, so both warpgroups have finished the slot.

Modes: ``--compile-sm90`` (no GPU needed: compiles for sm_90 and reports registers, spills,
shared memory and PTX instruction checks), ``--check`` and ``--bench`` (need an sm_90 GPU).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634
D = 576  # cache row: latent + RoPE
DV = 512  # value columns (the latent)
DR = D - DV  # RoPE columns
BLOCK_M = 64  # query heads per program
HBM_BYTES_PER_S = 4.28e12  # H200 memory floor used by --bench
SM90_SMEM_PER_BLOCK = 232448  # 227 KB: the most shared memory one block may use on sm_90


@gluon.jit
def _producer(ql_desc, qr_desc, kl_desc, kr_desc, ql_smem, qr_smem, kl_smem, kr_smem,
              q_bar, ready, empty, tok0, n_tiles,
              BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr):
    """Worker partition: TMA loads of Q (once) and of the cache tiles into the ring."""
    mbarrier.expect(q_bar, ql_desc.block_type.nbytes + qr_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(ql_desc, [0, 0], q_bar, ql_smem)
    tma.async_copy_global_to_shared(qr_desc, [0, 0], q_bar, qr_smem)
    tile_bytes: gl.constexpr = kl_desc.block_type.nbytes + kr_desc.block_type.nbytes
    for i in range(n_tiles):
        slot = i % NUM_BUF
        rnd = i // NUM_BUF
        # wait until the consumer has released this slot in the previous round; in round 0
        # parity 1 refers to the phase before the barrier's first one and passes at once
        mbarrier.wait(empty.index(slot), (rnd & 1) ^ 1)
        bar = ready.index(slot)
        mbarrier.expect(bar, tile_bytes)
        row = tok0 + i * BLOCK_N
        tma.async_copy_global_to_shared(kl_desc, [row, 0], bar, kl_smem.index(slot))
        tma.async_copy_global_to_shared(kr_desc, [row, 0], bar, kr_smem.index(slot))


@gluon.jit
def _scores(ql_smem, qr_smem, kl, kr, s_zero, ASYNC: gl.constexpr):
    """``S = Q_rope @ K_rope^T + Q_lat @ K_lat^T`` (both operands from shared memory); with
    ``ASYNC`` a wgmma token to wait on with ``warpgroup_mma_wait``."""
    s = warpgroup_mma(qr_smem, kr.permute((1, 0)), s_zero, use_acc=False, is_async=ASYNC)
    return warpgroup_mma(ql_smem, kl.permute((1, 0)), s, is_async=ASYNC)


@gluon.jit
def _softmax_pv(s, kl, m_i, l_i, acc, qk_scale, row_o: gl.constexpr, p_layout: gl.constexpr):
    """Online-softmax step on the scores ``s`` of one tile, then ``acc += P @ V`` (synchronous:
    the tile's shared memory is no longer read when it returns)."""
    s = s * qk_scale
    m_new = gl.maximum(m_i, gl.max(s, 1))
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s - gl.expand_dims(m_new, 1))
    l_i = l_i * alpha + gl.sum(p, 1)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
    p_op = gl.convert_layout(p.to(gl.bfloat16), p_layout)
    acc = warpgroup_mma(p_op, kl, acc)
    return m_new, l_i, acc


@gluon.jit
def _consumer(ql_smem, qr_smem, kl_smem, kr_smem, q_bar, ready, empty, o_ptr, lse_ptr, pid,
              n_tiles, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              DV: gl.constexpr, NUM_BUF: gl.constexpr, WG: gl.constexpr,
              OVERLAP: gl.constexpr):
    """Default partition (``WG`` warpgroups side by side along N): products, online softmax,
    buffer release, epilogue (O / l and the natural-log LSE). With ``OVERLAP`` the next
    tile's scores are issued (async wgmma) before this tile's softmax, so the tensor cores
    work while the softmax runs."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, WG], instr_shape=[16, BLOCK_N // WG, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, WG], instr_shape=[16, min(DV // WG, 256), 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
    acc = gl.zeros([BLOCK_M, DV], gl.float32, o_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)

    mbarrier.wait(q_bar, 0)
    if OVERLAP:
        mbarrier.wait(ready.index(0), 0)
        s_tok = _scores(ql_smem, qr_smem, kl_smem.index(0), kr_smem.index(0), s_zero, True)
        for i in range(n_tiles - 1):
            slot = i % NUM_BUF
            s = warpgroup_mma_wait(0, deps=[s_tok])
            nxt = (i + 1) % NUM_BUF
            mbarrier.wait(ready.index(nxt), ((i + 1) // NUM_BUF) & 1)
            s_tok = _scores(ql_smem, qr_smem, kl_smem.index(nxt), kr_smem.index(nxt), s_zero,
                            True)
            m_i, l_i, acc = _softmax_pv(s, kl_smem.index(slot), m_i, l_i, acc, qk_scale,
                                        row_o, p_layout)
            mbarrier.arrive(empty.index(slot), count=1)
        last = (n_tiles - 1) % NUM_BUF
        s = warpgroup_mma_wait(0, deps=[s_tok])
        m_i, l_i, acc = _softmax_pv(s, kl_smem.index(last), m_i, l_i, acc, qk_scale, row_o,
                                    p_layout)
        mbarrier.arrive(empty.index(last), count=1)
    else:
        for i in range(n_tiles):
            slot = i % NUM_BUF
            mbarrier.wait(ready.index(slot), (i // NUM_BUF) & 1)
            s = _scores(ql_smem, qr_smem, kl_smem.index(slot), kr_smem.index(slot), s_zero,
                        False)
            m_i, l_i, acc = _softmax_pv(s, kl_smem.index(slot), m_i, l_i, acc, qk_scale,
                                        row_o, p_layout)
            mbarrier.arrive(empty.index(slot), count=1)

    inv = gl.convert_layout(1.0 / l_i, row_o)
    out = acc * gl.expand_dims(inv, 1)
    rows = gl.arange(0, BLOCK_M, row_o)
    cols = gl.arange(0, DV, col_o)
    o_ptrs = (o_ptr + pid * (BLOCK_M * DV) + gl.expand_dims(rows, 1) * DV
              + gl.expand_dims(cols, 0))
    gl.store(o_ptrs, out)
    lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
    gl.store(lse_ptr + pid * BLOCK_M + gl.arange(0, BLOCK_M, row_s), lse)


@gluon.jit
def _mla_decode_ws(ql_desc, qr_desc, kl_desc, kr_desc, o_ptr, lse_ptr, tokens_per_prog,
                   qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, DV: gl.constexpr,
                   DR: gl.constexpr, NUM_BUF: gl.constexpr, WG: gl.constexpr,
                   OVERLAP: gl.constexpr):
    """One program = one split of ``tokens_per_prog`` cache rows starting at
    ``program_id * tokens_per_prog``; writes O [BLOCK_M, DV] and lse [BLOCK_M] at its index."""
    pid = gl.program_id(0)
    tok0 = pid * tokens_per_prog
    n_tiles = tokens_per_prog // BLOCK_N

    ql_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, DV], ql_desc.layout)
    qr_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, DR], qr_desc.layout)
    kl_smem = gl.allocate_shared_memory(gl.bfloat16, [NUM_BUF, BLOCK_N, DV], kl_desc.layout)
    kr_smem = gl.allocate_shared_memory(gl.bfloat16, [NUM_BUF, BLOCK_N, DR], kr_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_bar = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], bar_layout)
    mbarrier.init(q_bar, count=1)
    for b in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(b), count=1)
        mbarrier.init(empty.index(b), count=1)
    fence_async_shared()

    gl.warp_specialize(
        [(_consumer, (ql_smem, qr_smem, kl_smem, kr_smem, q_bar, ready, empty, o_ptr, lse_ptr,
                      pid, n_tiles, qk_scale, BLOCK_M, BLOCK_N, DV, NUM_BUF, WG, OVERLAP)),
         (_producer, (ql_desc, qr_desc, kl_desc, kr_desc, ql_smem, qr_smem, kl_smem, kr_smem,
                      q_bar, ready, empty, tok0, n_tiles, BLOCK_N, NUM_BUF))],
        [1], [24])

    mbarrier.invalidate(q_bar)
    for b in gl.static_range(NUM_BUF):
        mbarrier.invalidate(ready.index(b))
        mbarrier.invalidate(empty.index(b))


def _blocks(block_n: int) -> dict[str, list[int]]:
    """TMA block shapes: Gluon block shapes must be powers of two, so a 576-wide row is loaded
    as a 512-wide latent block and a 64-wide RoPE block (two descriptors on the same rows)."""
    return {"ql": [BLOCK_M, DV], "qr": [BLOCK_M, DR], "kl": [block_n, DV], "kr": [block_n, DR]}


def _layouts(block_n: int) -> dict[str, Any]:
    """Shared layouts of the four blocks (128-byte swizzle for bf16)."""
    return {k: gl.NVMMASharedLayout.get_default_for(v, gl.bfloat16)
            for k, v in _blocks(block_n).items()}


@dataclass(frozen=True)
class Config:
    """Compile-time parameters: tile rows, ring depth, consumer warpgroups, score overlap."""

    block_n: int = 64
    num_buf: int = 2
    wg: int = 2
    overlap: bool = False

    def consts(self) -> dict[str, int]:
        """The kernel's constexpr arguments."""
        return {"BLOCK_M": BLOCK_M, "BLOCK_N": self.block_n, "DV": DV, "DR": DR,
                "NUM_BUF": self.num_buf, "WG": self.wg, "OVERLAP": int(self.overlap)}

    def __str__(self) -> str:
        return (f"BLOCK_N={self.block_n} NUM_BUF={self.num_buf} consumer_warpgroups={self.wg} "
                f"OVERLAP={int(self.overlap)}")


#: configurations compiled by ``--compile-sm90 --sweep`` (the first is the default)
SWEEP = (Config(), Config(wg=1), Config(block_n=32, num_buf=3), Config(block_n=32, num_buf=4),
         Config(num_buf=3), Config(overlap=True), Config(block_n=32, num_buf=4, overlap=True))


def compile_sm90(cfg: Config) -> Any:
    """``_mla_decode_ws`` compiled for sm_90 without a GPU (Triton's bundled ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    layouts, blocks = _layouts(cfg.block_n), _blocks(cfg.block_n)
    consts = cfg.consts()
    descs = [f"{k}_desc" for k in blocks]
    params = [*descs, "o_ptr", "lse_ptr", "tokens_per_prog", "qk_scale", *consts]
    signature = {**{f"{k}_desc": f"tensordesc<bf16{v},{layouts[k]!r}>" for k, v in blocks.items()},
                 "o_ptr": "*fp32", "lse_ptr": "*fp32", "tokens_per_prog": "i32",
                 "qk_scale": "fp32", **{k: "constexpr" for k in consts}}
    src = GluonASTSource(fn=_mla_decode_ws, signature=signature,
                         constexprs={(params.index(k),): v for k, v in consts.items()},
                         attrs={(params.index(p),): [["tt.divisibility", 16]]
                                for p in ("o_ptr", "lse_ptr", "tokens_per_prog")})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4 * cfg.wg})


def report_compile(cfg: Config) -> bool:
    """Compile one configuration and print what the compiler made of it; True if it compiled
    and fits sm_90's shared memory."""
    from mlra.kernels.aot import ptxas_usage

    tag = str(cfg)
    try:
        k = compile_sm90(cfg)
    except Exception as e:  # a probe: report any compiler failure
        msg = str(e).strip().splitlines()
        print(f"[{tag}] FAILED: {type(e).__name__}: {' | '.join(msg[-6:])[:1500]}")
        return False
    ptx = k.asm["ptx"]
    use = ptxas_usage(ptx)
    ttgir = k.asm["ttgir"]
    checks = {name: name in ptx
              for name in ("cp.async.bulk.tensor", "mbarrier", "wgmma", "setmaxnreg")}
    nreg = sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx)))
    fits = k.metadata.shared <= SM90_SMEM_PER_BLOCK
    print(f"[{tag}] compiled OK")
    print(f"  registers (ptxas -v, sm_90a): {use['registers']}, spill stores/loads "
          f"{use['spill_stores']}/{use['spill_loads']} bytes, "
          f"warpgroup.arrive injected: {use['arrive_injected']}")
    print(f"  shared memory: {k.metadata.shared} bytes "
          f"({'fits' if fits else 'EXCEEDS'} sm_90's {SM90_SMEM_PER_BLOCK} per block); "
          f"num_warps {k.metadata.num_warps}")
    print("  PTX contains: " + ", ".join(f"{n}={v}" for n, v in checks.items()))
    print(f"  setmaxnreg: {nreg}; TTGIR has ttg.warp_specialize: "
          f"{'ttg.warp_specialize' in ttgir}")
    shapes = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)))
    print(f"  instruction counts: cp.async.bulk.tensor {ptx.count('cp.async.bulk.tensor')}, "
          f"wgmma.mma_async {ptx.count('wgmma.mma_async')} {shapes}, "
          f"wgmma.wait_group {ptx.count('wgmma.wait_group')}, "
          f"mbarrier.try_wait {ptx.count('mbarrier.try_wait')}, "
          f"mbarrier.arrive {ptx.count('mbarrier.arrive')}")
    meta = getattr(k.metadata, "tensordesc_meta", None)
    if meta:
        boxes = [m["block_size"] for m in meta]
        print(f"  TMA boxes per descriptor (ql, qr, kl, kr): {boxes}")
    return fits


def _launch(q: Any, cache: Any, n_progs: int, scale: float, cfg: Config) -> tuple[Any, Any]:
    """Run the kernel: ``n_progs`` programs, each over ``len(cache) / n_progs`` tokens."""
    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    n = cache.shape[0]
    assert n % n_progs == 0 and (n // n_progs) % cfg.block_n == 0, "tokens per program % BLOCK_N"
    layouts, blocks = _layouts(cfg.block_n), _blocks(cfg.block_n)
    # latent and RoPE descriptors over the same rows (the RoPE view starts 1024 bytes in)
    src = {"ql": q[:, :DV], "qr": q[:, DV:], "kl": cache[:, :DV], "kr": cache[:, DV:]}
    descs = [TensorDescriptor.from_tensor(src[k], blocks[k], layouts[k]) for k in blocks]
    o = torch.empty(n_progs, BLOCK_M, DV, dtype=torch.float32, device=q.device)
    lse = torch.empty(n_progs, BLOCK_M, dtype=torch.float32, device=q.device)
    _mla_decode_ws[(n_progs,)](*descs, o, lse, n // n_progs, scale * LOG2E, **cfg.consts(),
                               num_warps=4 * cfg.wg)
    return o, lse


def check(n: int, scale: float, cfg: Config) -> bool:
    """One program over ``n`` tokens against an fp32 torch reference."""
    import torch

    torch.manual_seed(0)
    q = torch.randn(BLOCK_M, D, device="cuda").to(torch.bfloat16)
    cache = torch.randn(n, D, device="cuda").to(torch.bfloat16)
    o, lse = _launch(q, cache, 1, scale, cfg)
    torch.cuda.synchronize()
    s = (q.float() @ cache.float().T) * scale
    ref_lse = torch.logsumexp(s, dim=1)
    ref_o = torch.softmax(s, dim=1) @ cache[:, :DV].float()
    err_o = ((o[0] - ref_o).abs().max() / ref_o.abs().max()).item()
    err_l = ((lse[0] - ref_lse).abs().max() / ref_lse.abs().max()).item()
    ok = err_o < 2e-2 and err_l < 1e-3
    print(f"check [{cfg}] n={n} scale={scale:.5f}: max rel err O {err_o:.3e}, "
          f"lse {err_l:.3e} -> {'PASS' if ok else 'FAIL'}")
    return ok


def bench(n: int, n_progs: int, cfg: Config, iters: int = 20) -> None:
    """``n_progs`` independent splits over ``n`` tokens (no merge); time against the floor."""
    import torch

    n = n // (n_progs * cfg.block_n) * (n_progs * cfg.block_n)
    q = torch.randn(BLOCK_M, D, device="cuda").to(torch.bfloat16)
    cache = torch.randn(n, D, device="cuda").to(torch.bfloat16)
    scale = 1.0 / math.sqrt(192)
    for _ in range(3):
        _launch(q, cache, n_progs, scale, cfg)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        _launch(q, cache, n_progs, scale, cfg)
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) * 1e3 / iters
    nbytes = cache.numel() * cache.element_size()
    floor_us = nbytes / HBM_BYTES_PER_S * 1e6
    print(f"bench [{cfg}] n={n} programs={n_progs}: {us:.1f} us per launch (host descriptor "
          f"creation included), {nbytes / us / 1e3:.0f} GB/s; memory floor {floor_us:.1f} us "
          f"-> {floor_us / us:.0%} of the floor")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--compile-sm90`` / ``--check`` / ``--bench``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-sm90", action="store_true", help="compile for sm_90 (no GPU)")
    ap.add_argument("--sweep", action="store_true",
                    help="with --compile-sm90: compile the SWEEP configurations")
    ap.add_argument("--check", action="store_true", help="compare with torch (sm_90 GPU)")
    ap.add_argument("--bench", action="store_true", help="time at --bench-n tokens (GPU)")
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--num-buf", type=int, default=2)
    ap.add_argument("--wg", type=int, default=2, help="consumer warpgroups (1 or 2)")
    ap.add_argument("--overlap", action="store_true",
                    help="issue the next tile's scores before this tile's softmax")
    ap.add_argument("--n", type=int, default=4096, help="tokens for --check")
    ap.add_argument("--scale", type=float, default=1.0 / math.sqrt(192))
    ap.add_argument("--bench-n", type=int, default=1 << 20)
    ap.add_argument("--programs", type=int, default=132)
    args = ap.parse_args(argv)
    if not (args.compile_sm90 or args.check or args.bench):
        ap.error("give --compile-sm90, --check and/or --bench")
    cfg = Config(args.block_n, args.num_buf, args.wg, args.overlap)
    ok = True
    if args.compile_sm90:
        for c in SWEEP if args.sweep else (cfg,):
            ok &= report_compile(c)
    if args.check:
        ok &= check(args.n, args.scale, cfg)
    if args.bench:
        bench(args.bench_n, args.programs, cfg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
