"""Launch-parameter sweep for the Triton decode kernels (GPU). Times each (block_n, warps,
stages) and split factor at batch 1 x 1M and batch 128 x 16K per shape, FlashMLA alongside for
MLA, and dumps register/spill/shared-memory use of every compiled kernel.

    PYTHONPATH=src:.carry python benchmarks/decode/tune.py --out DIR [--shapes mla,...]

``--configs "bn,warps,stages,tma,spp[,block_m];..."`` replaces the per-shape lists,
``--points "1x128K,32x16K"`` the (batch x length) points, ``--splits base`` times only the
wave model's split factor, ``--split-list 16,32,64`` the given ones; the paper-size shapes
(``mlra4_2p9b``, ``mla_2p9b``) are accepted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mlra.bench.decode import (
    PAPER_SHAPES,
    SHAPES,
    build_inputs,
    fmt_size,
    io_bytes,
    parse_size,
    triton_call,
)
from mlra.bench.flashmla import flashmla_mla_call, load_flashmla
from mlra.bench.timing import copy_bandwidth, l2_flush_buffer, time_cuda
from mlra.kernels import triton_gqa, triton_latent
from mlra.kernels._triton_common import choose_num_splits

# (block_n, num_warps, num_stages, use_tma, streams_per_program)
CONFIGS = {
    "mla": [(64, 8, 2, False, 1), (64, 8, 2, True, 1), (64, 16, 2, True, 1),
            (32, 8, 3, True, 1), (32, 8, 4, True, 1)],
    "mlra4_fused": [(64, 8, 2, True, 4), (64, 4, 3, True, 1), (64, 4, 2, False, 1),
                    (128, 4, 2, True, 1), (64, 4, 2, True, 2), (64, 8, 2, True, 2)],
    "mlra4_tp4": [(64, 4, 3, False, 1), (64, 4, 3, True, 1), (64, 4, 4, True, 1),
                  (128, 4, 2, True, 1), (128, 4, 3, True, 1), (128, 8, 3, True, 1)],
    "gla2_tp2": [(128, 4, 2, False, 1), (128, 4, 2, True, 1), (64, 4, 3, True, 1),
                 (128, 4, 3, True, 1)],
    "gqa_tp8": [(128, 4, 3, False, 1), (128, 4, 3, True, 1), (128, 4, 4, True, 1),
                (64, 4, 4, True, 1)],
}
POINTS = [(1, 1 << 20), (128, 16 << 10), (1, 128 << 10)]
ALL_SHAPES = {**SHAPES, **PAPER_SHAPES}


def parse_configs(text: str) -> list[tuple]:
    """``"64,4,5,1,1,32;..."`` -> [(block_n, warps, stages, tma, spp, block_m or None), ...]."""
    out = []
    for part in filter(None, text.split(";")):
        v = [int(x) for x in part.split(",")]
        out.append((v[0], v[1], v[2], bool(v[3]), v[4], v[5] if len(v) > 5 else None))
    return out


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"1x128K,32x16K"`` -> [(1, 131072), (32, 16384)]."""
    return [(int(b), parse_size(n)) for b, n in (p.split("x") for p in text.split(","))]


def compiled_kernels() -> list[dict]:
    """Registers, spills and shared memory of every kernel compiled so far."""
    info = []
    for mod, name in ((triton_latent, "_latent_decode_kernel"), (triton_gqa, "_gqa_decode_kernel")):
        fn = getattr(mod, name)
        try:
            caches = fn.device_caches
            for dev_cache in caches.values():
                for key, k in dev_cache[0].items():
                    info.append(dict(kernel=name, key=str(key)[:300], n_regs=k.n_regs,
                                     n_spills=k.n_spills, shared=k.metadata.shared,
                                     num_warps=k.metadata.num_warps,
                                     num_stages=k.metadata.num_stages))
        except Exception as exc:  # introspection differs across triton versions
            info.append(dict(kernel=name, error=repr(exc)))
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=",".join(CONFIGS))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--configs", default=None, help="bn,warps,stages,tma,spp[,block_m];...")
    ap.add_argument("--points", default=None, help="BATCHxLENGTH,... (default 1x1M,128x16K,1x128K)")
    ap.add_argument("--split-list", default=None,
                    help="explicit split factors to time (e.g. 16,32,64) instead of --splits")
    ap.add_argument("--splits", default="three", choices=("three", "base"),
                    help="three: the wave model's split factor, half and double; base: it alone")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the profiler breakdown")
    args = ap.parse_args()
    missing = [n for n in args.shapes.split(",") if n not in ALL_SHAPES
               or (args.configs is None and n not in CONFIGS)]
    if missing:
        ap.error(f"{', '.join(missing)}: unknown shape, or no default configurations (give "
                 f"--configs); shapes: {', '.join(ALL_SHAPES)}")
    points = parse_points(args.points) if args.points else POINTS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bw = copy_bandwidth()
    print(f"copy {bw / 1e9:.0f} GB/s", flush=True)
    fm, why = load_flashmla()
    print("flashmla:", "ok" if fm else why, flush=True)
    flush = l2_flush_buffer()
    rows = []
    for name in args.shapes.split(","):
        shape = ALL_SHAPES[name]
        configs = parse_configs(args.configs) if args.configs else \
            [(*c, None) for c in CONFIGS[name]]
        for batch, length in points:
            inputs = build_inputs(shape, batch, length)
            nbytes = io_bytes(shape, batch, length)
            for bn, nw, ns, tma, spp, bm in configs:
                if shape.kind == "latent":
                    cfg = triton_latent.LatentKernelConfig(
                        block_n=bn, num_warps=nw, num_stages=ns, use_tma=tma,
                        streams_per_program=spp, block_m=bm)
                else:
                    cfg = triton_gqa.GQAKernelConfig(block_n=bn, num_warps=nw, num_stages=ns,
                                                     use_tma=tma)
                rows_m = shape.hq if shape.kind == "latent" else shape.hq // shape.hkv
                mblk = -(-rows_m // (bm or min(64, max(16, rows_m))))
                progs = batch * mblk * (shape.nb // spp if shape.kind == "latent" else shape.hkv)
                base = choose_num_splits(progs, length, bn, sms,
                                         ctas_per_sm=1 if nw == 8 else 2)
                tried = {base} if args.splits == "base" else {base, max(1, base // 2), base * 2}
                if args.split_list:
                    tried = {int(v) for v in args.split_list.split(",")}
                for splits in sorted(tried):
                    t0 = time.time()
                    try:
                        fn = triton_call(shape, inputs, length, num_splits=splits, config=cfg)
                        fn()
                        t = time_cuda(fn, reps=args.reps, flush=flush)
                    except Exception as exc:
                        print(f"{name} b{batch} {fmt_size(length)} {cfg} s{splits}: FAILED "
                              f"{str(exc)[:200]}", flush=True)
                        break
                    r = dict(shape=name, batch=batch, seq_len=length, block_n=bn, warps=nw,
                             stages=ns, tma=tma, spp=spp, block_m=bm, splits=splits,
                             us=round(t.median_us, 2),
                             frac_copy=round(nbytes / (t.median_us * 1e-6) / bw, 4),
                             wall_s=round(time.time() - t0, 1))
                    rows.append(r)
                    print(f"{name:12s} b{batch:<4d} {fmt_size(length):>5s} bn{bn:<4d} w{nw} "
                          f"st{ns} {'tma' if tma else 'ptr'} g{spp} m{bm or '-'} s{splits:<4d} "
                          f"{r['us']:9.1f} us {100 * r['frac_copy']:5.1f}%", flush=True)
            if fm is not None and name == "mla":
                fn = flashmla_mla_call(fm, inputs["q_latent"], inputs["q_rope"], inputs["cache"],
                                       inputs["block_table"], inputs["seq_lens"],
                                       inputs["scale"])
                fn()
                t = time_cuda(fn, reps=args.reps, flush=flush)
                rows.append(dict(shape="mla", kernel="flashmla", batch=batch, seq_len=length,
                                 us=round(t.median_us, 2),
                                 frac_copy=round(nbytes / (t.median_us * 1e-6) / bw, 4)))
                print(f"{'mla':12s} b{batch:<4d} {fmt_size(length):>5s} FLASHMLA "
                      f"{t.median_us:9.1f} us {100 * rows[-1]['frac_copy']:5.1f}%", flush=True)
            del inputs
            torch.cuda.empty_cache()
        (out / "tune.json").write_text(json.dumps(dict(copy_gbps=bw / 1e9, rows=rows,
                                                       kernels=compiled_kernels()), indent=1))
    best = {}
    for r in rows:
        if "block_n" not in r:
            continue
        k = (r["shape"], r["batch"], r["seq_len"])
        if k not in best or r["us"] < best[k]["us"]:
            best[k] = r
    print("\nbest per point:")
    for k, r in sorted(best.items()):
        print(f"  {k}: bn{r['block_n']} w{r['warps']} st{r['stages']} tma{int(r['tma'])} "
              f"g{r['spp']} m{r['block_m'] or '-'} s{r['splits']} {r['us']} us "
              f"{100 * r['frac_copy']:.1f}%")
    for k in compiled_kernels():
        print({x: k.get(x) for x in ("kernel", "n_regs", "n_spills", "shared", "num_warps",
                                     "num_stages")})
    if not args.no_breakdown:
        breakdown(args.shapes.split(","))


def breakdown(names) -> None:
    """Per-kernel device time (profiler) of the default configuration at batch 1 x 128K and
    1M, and the event time with and without the host-overhead shield."""
    from torch.profiler import ProfilerActivity, profile
    flush = l2_flush_buffer()
    for name in names:
        shape = ALL_SHAPES[name]
        for length in (128 << 10, 1 << 20):
            inputs = build_inputs(shape, 1, length)
            fn = triton_call(shape, inputs, length)
            fn()
            shielded = time_cuda(fn, reps=30, flush=flush).median_us
            bare = time_cuda(fn, reps=30, flush=flush, host_shield_cycles=0).median_us
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    flush.zero_()
                    fn()
                torch.cuda.synchronize()
            parts = {}
            for e in prof.key_averages():
                if e.key.startswith("_"):  # the Triton kernels
                    total = getattr(e, "device_time_total", None) or e.cuda_time_total
                    parts[e.key[:40]] = round(total / max(1, e.count), 1)
            print(f"breakdown {name} b1 {fmt_size(length)}: event {shielded:.1f} us (no shield "
                  f"{bare:.1f}); kernels {parts}", flush=True)
            del inputs, fn
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
